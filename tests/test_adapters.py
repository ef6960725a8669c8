"""The core's adapter layer (spectra_core.adapters) on real peft, tiny random Llama: resizing live LoRA
layers (growth keeps logits, shrink is the best rank-k approximation, Adam state follows, the saved
adapter loads in stock peft with equal logits), read-only handles, and a peft target_parameters plan."""

from __future__ import annotations

import pytest
import torch

from spectra_alors.allocator import AlorsTiers
from spectra_core.adapters import AdapterHandle, factored_svd, sync_config
from spectra_core.adapters import delta as lora_delta
from spectra_core.adapters import resize as resize_lora
from spectra_core.builtins.quantizers import BnbNF4Quantizer, NoQuantizer
from spectra_core.config import TargetsConfig
from spectra_core.errors import InputError
from spectra_core.models import find_targets
from spectra_core.scores import ModuleScore, Scores
from spectra_core.adapters import lora_layers
from spectra_core.training.modeling import build_peft_model
from spectra_core.training.optim import make_optimizer
from train_fixtures import tiny_model_dir  # noqa: F401  (fixture)

TIERS = [{"name": "high", "quantile": [0, 0.5], "rank": 8, "alpha": 8, "lr_scale": 1.0},
         {"name": "medium", "quantile": [0.5, 1], "rank": 4, "alpha": 4, "lr_scale": 2.0}]
# float32 compute: the comparison sees the resize, not bf16 rounding of the sum
QUANTIZERS = {"float": NoQuantizer(), "nf4": BnbNF4Quantizer({"compute_dtype": "float32"})}


def build(model_dir, quantizer: str = "float"):
    targets = find_targets(model_dir, TargetsConfig())
    scores = Scores(scorer="test", modules=[ModuleScore(name=t.name, type=t.type, score=float(i % 3))
                                            for i, t in enumerate(targets)])
    plan = AlorsTiers({"tiers": TIERS}).allocate(scores, targets)
    model = build_peft_model(QUANTIZERS[quantizer].load(model_dir), plan, seed=0)
    with torch.no_grad():  # a trained-looking update: B non-zero
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.05)
    return model, plan


def logits(model, seed: int = 1) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits.float()
    model.train()
    return out


def delta(layer) -> torch.Tensor:
    b, a = layer.lora_B["default"].weight.detach(), layer.lora_A["default"].weight.detach()
    return layer.scaling["default"] * b.double() @ a.double()


@pytest.mark.parametrize("quantizer", ["float", "nf4"])
def test_growth_keeps_the_function(tiny_model_dir, quantizer):
    model, plan = build(tiny_model_dir, quantizer)
    before = logits(model)
    for name, layer in lora_layers(model).items():
        old = layer.r["default"]
        done = resize_lora(layer, old + 5, alpha=3.0, use_rslora=True)
        assert (done.old_rank, done.new_rank, done.energy_kept) == (old, old + 5, 1.0)
        assert layer.lora_A["default"].weight.shape[0] == layer.lora_B["default"].weight.shape[1] == old + 5
        assert not torch.all(layer.lora_A["default"].weight[old:] == 0)  # new directions can learn
        assert torch.all(layer.lora_B["default"].weight[:, old:] == 0)
    torch.testing.assert_close(logits(model), before, rtol=0, atol=1e-5)


def test_shrink_is_the_truncated_svd_and_exact_below_the_update_rank(tiny_model_dir):
    model, _ = build(tiny_model_dir)
    layers = list(lora_layers(model).values())
    layer = layers[0]
    full = delta(layer)
    u, s, vh = torch.linalg.svd(full)
    done = resize_lora(layer, 3, alpha=5.0, use_rslora=True)
    torch.testing.assert_close(delta(layer), (u[:, :3] * s[:3]) @ vh[:3], rtol=0, atol=1e-6)
    assert done.energy_kept == pytest.approx(float((s[:3] ** 2).sum() / (s ** 2).sum()), rel=1e-9)
    assert 0 < done.energy_kept < 1
    # an update of rank 2 survives a shrink to rank 3 exactly (logits unchanged)
    with torch.no_grad():
        for other in layers:
            b = other.lora_B["default"].weight
            b[:, 2:] = 0
    before = logits(model)
    for other in layers[1:]:
        assert resize_lora(other, 3, alpha=4.0, use_rslora=False).energy_kept == pytest.approx(1.0)
    torch.testing.assert_close(logits(model), before, rtol=0, atol=1e-5)


def test_factored_svd_matches_dense():
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(40, 6, generator=g), torch.randn(6, 30, generator=g)
    u, s, vh = factored_svd(b, a)
    dense = b.double() @ a.double()
    torch.testing.assert_close(s, torch.linalg.svdvals(dense)[:6])
    torch.testing.assert_close(u @ torch.diag(s) @ vh, dense)


def test_adam_state_is_resized_with_the_parameters(tiny_model_dir):
    model, plan = build(tiny_model_dir)
    optimizer = make_optimizer(model, plan, 1e-3, 0.0)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    name, layer = next(iter(lora_layers(model).items()))
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    old, s_old = layer.r["default"], layer.scaling["default"]
    m_a, v_b = optimizer.state[a]["exp_avg"].clone(), optimizer.state[b]["exp_avg_sq"].clone()
    resize_lora(layer, old + 4, alpha=plan.modules[name].alpha, use_rslora=True, optimizer=optimizer)
    c = (s_old / layer.scaling["default"]) ** 0.5
    ratio = layer.scaling["default"] / s_old
    assert a not in optimizer.state and b not in optimizer.state  # new Parameters took their place
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert any(p is a for g in optimizer.param_groups for p in g["params"])
    state_a, state_b = optimizer.state[a], optimizer.state[b]
    assert state_a["exp_avg"].shape == a.shape and state_b["exp_avg_sq"].shape == b.shape
    torch.testing.assert_close(state_a["exp_avg"][:old], ratio * c * m_a)
    torch.testing.assert_close(state_b["exp_avg_sq"][:, :old], (ratio * c) ** 2 * v_b)
    assert torch.all(state_a["exp_avg"][old:] == 0) and torch.all(state_b["exp_avg_sq"][:, old:] == 0)
    resize_lora(layer, 2, alpha=2.0, use_rslora=True, optimizer=optimizer)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert optimizer.state[a]["exp_avg"].shape == (2, a.shape[1])
    assert torch.all(optimizer.state[b]["exp_avg_sq"] >= 0)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()  # shapes agree: AdamW runs on the resized parameters


def test_resize_beyond_the_module_is_refused(tiny_model_dir):
    model, _ = build(tiny_model_dir)
    layer = next(iter(lora_layers(model).values()))
    limit = min(layer.lora_B["default"].weight.shape[0], layer.lora_A["default"].weight.shape[1])
    with pytest.raises(InputError, match=f"between 1 and {limit}"):
        resize_lora(layer, limit + 1, alpha=1.0, use_rslora=True)
    with pytest.raises(InputError):
        resize_lora(layer, 0, alpha=1.0, use_rslora=True)


def test_resized_adapter_loads_in_stock_peft_with_equal_logits(tiny_model_dir, tmp_path):
    from peft import PeftModel

    model, plan = build(tiny_model_dir)
    for i, (name, layer) in enumerate(lora_layers(model).items()):
        rank, alpha = (3, 2.0) if i % 2 else (11, 6.0)
        resize_lora(layer, rank, alpha, use_rslora=True)
        plan.modules[name].rank, plan.modules[name].alpha = rank, alpha
    sync_config(model, plan)
    expected = logits(model)
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(NoQuantizer().load(tiny_model_dir), tmp_path / "adapter")
    ranks = {n: layer.r["default"] for n, layer in lora_layers(loaded).items()}
    assert ranks == {n: m.rank for n, m in plan.modules.items()}
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=1e-5)


def test_handles_are_read_only_views_of_the_live_lora(tiny_model_dir):
    model, plan = build(tiny_model_dir)
    name, layer = next(iter(lora_layers(model).items()))
    handle = AdapterHandle(name, layer)
    a, b = handle.factors()
    assert handle.shape == tuple(plan.modules[name].shape) and handle.rank == a.shape[0] == b.shape[1]
    assert handle.kind == "module" and handle.alpha == plan.modules[name].alpha
    torch.testing.assert_close(handle.delta().double(), delta(layer), rtol=0, atol=1e-6)
    torch.testing.assert_close(handle.effective_weight(), handle.base_weight() + handle.delta())
    torch.testing.assert_close(handle.singular_values(), torch.linalg.svdvals(delta(layer))[:handle.rank])
    a.zero_()
    b.zero_()  # copies: the model is unchanged
    assert float(layer.lora_B["default"].weight.detach().abs().sum()) > 0


class Experts(torch.nn.Module):
    """A minimal MoE-style block: one 3-D weight (experts × in × out), each token routed to expert 0 or 1."""

    def __init__(self, experts: int = 2, d_in: int = 8, d_out: int = 6) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(experts, d_in, d_out, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[i] @ self.weight[i % self.weight.shape[0]] for i in range(x.shape[0])])


class Holder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.experts = Experts()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(x)


def test_fused_experts_resize_expert_by_expert_with_adam_state():
    """Shrinking the LoRA of a fused 3-D expert tensor keeps each expert's best rank-k update (truncated
    SVD per expert); AdamW's moments follow into the new shapes and the next step runs."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(Holder(), LoraConfig(r=4, lora_alpha=8, target_parameters=["experts.weight"],
                                                init_lora_weights=False))
    (name, layer), = lora_layers(model).items()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(1))
    model(x).square().mean().backward()
    optimizer.step()
    before = lora_delta(layer)
    done = resize_lora(layer, 2, 4.0, use_rslora=False, optimizer=optimizer)
    assert layer.r["default"] == 2 and layer.lora_A["default"].weight.shape[0] == 4  # 2 experts × rank 2
    for e in range(2):
        u, s, vh = torch.linalg.svd(before[e].double())
        torch.testing.assert_close(lora_delta(layer)[e].double(), (u[:, :2] * s[:2]) @ vh[:2], rtol=1e-4, atol=1e-5)
    assert 0 < done.energy_kept < 1
    model(x).square().mean().backward()
    optimizer.step()  # the moments were remapped to the new shapes
    assert all(optimizer.state[p]["exp_avg"].shape == p.shape for p in model.parameters() if p.requires_grad)
