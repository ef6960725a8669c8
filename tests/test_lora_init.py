"""The plan's LoRA init on a tiny random Llama with real peft and real bitsandbytes NF4: LoftQ corrects
every 4-bit weight optimally at its rank (frozen LoRAs too) and the merged export keeps the corrections;
EVA (on the NF4 base) redistributes ranks, the plan follows, stock peft loads the adapter, resume is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from train_fixtures import assert_resumes_bitwise, config_dict, make_plan, tiny_model_dir, write_text  # noqa: F401

from spectra_core import deactivate
from spectra_core.errors import ConfigError, PluginError
from spectra_core.pipeline import Pipeline
from spectra_core.plan import LoraInit
from spectra_core.registry import get_registry
from spectra_core.run import Run
from spectra_core.quantized import dense_weight
from spectra_core.spectral.sources import safetensors_source
from spectra_core.adapters import lora_layers
from spectra_core.training.apply import apply_changes
from spectra_core.training.modeling import build_peft_model

NF4 = {"name": "bnb-nf4", "options": {"compute_dtype": "float32"}}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_text(tmp_path_factory.mktemp("data") / "d.txt", 200)


def _nf4_base(model_dir: Path):
    base = get_registry().create("quantizer", NF4["name"], NF4["options"]).load(model_dir)
    for p in base.parameters():
        p.requires_grad_(False)
    return base


def _loftq_plan(model_dir: Path, rank: int = 4):
    plan = make_plan(model_dir, rank=rank, mode="all-inactive", active="top")
    for m in plan.modules.values():
        m.alpha = float(rank)
    plan.init = LoraInit(name="loftq")
    return plan


def test_loftq_gives_every_lora_the_optimal_rank_r_correction(tiny_model_dir):
    plan = _loftq_plan(tiny_model_dir)
    model = build_peft_model(_nf4_base(tiny_model_dir), plan, model_dir=tiny_model_dir)
    layers = lora_layers(model)
    assert len(layers) == len(plan.modules) == 14  # frozen modules carry a correction too
    for name, original in safetensors_source(tiny_model_dir, names=list(layers)):
        layer = layers[name]
        residual = original.float() - dense_weight(layer.get_base_layer())
        after = residual - layer.get_delta_weight("default").detach().float()
        tail = torch.linalg.svdvals(residual)[4:]
        # Eckart–Young: the best rank-4 approximation leaves exactly the tail singular values
        assert float(after.norm()) ** 2 == pytest.approx(float((tail ** 2).sum()), rel=1e-4)
        assert after.norm() < 0.95 * residual.norm()
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    want = _logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), ids)
    nf4 = _logits(_nf4_base(tiny_model_dir).eval(), ids)
    assert (_logits(model.eval(), ids) - want).norm() < (nf4 - want).norm()  # closer to the float model


def test_loftq_needs_scaling_one_and_a_4bit_base_and_no_init_survives_tying(tiny_model_dir, data_file, tmp_path):
    cfg = config_dict(tiny_model_dir, data_file, tmp_path / "run")
    cfg["allocator"]["options"].update(rank=4, alpha=8, lora_init={"name": "loftq"})
    with pytest.raises(ConfigError, match=r"LoftQ init needs LoRA scaling 1.*alpha 8.*2×"):
        Pipeline.from_dict(cfg).plan()
    cfg["allocator"]["options"].update(alpha=4, lora_init={"name": "eva"})
    cfg["gradient_merger"] = {"name": "cosine-groups"}
    with pytest.raises(ConfigError, match="cannot be combined with a gradient merger"):
        Pipeline.from_dict(cfg).plan()
    with pytest.raises(ConfigError, match="is not a 4-bit layer"):
        build_peft_model(get_registry().create("quantizer", "none").load(tiny_model_dir), _loftq_plan(tiny_model_dir),
                         model_dir=tiny_model_dir)
    assert not (tmp_path / "run").exists()


def test_dropping_a_loftq_correction_is_refused_by_the_config_and_by_the_core(tiny_model_dir, data_file, tmp_path):
    cfg = config_dict(tiny_model_dir, data_file, tmp_path / "run")
    cfg.update(quantizer=NF4, rebalancer={"name": "snr-reselect", "options": {"on_deactivate": "drop"}})
    cfg["allocator"]["options"].update(mode="all-inactive", alpha=4, lora_init={"name": "loftq"})
    with pytest.raises(ConfigError, match="would zero the LoftQ correction") as info:
        Pipeline.from_dict(cfg).plan()
    assert "on_deactivate: keep" in info.value.hint
    assert not (tmp_path / "run").exists()
    plan = _loftq_plan(tiny_model_dir)
    model = build_peft_model(_nf4_base(tiny_model_dir), plan, model_dir=tiny_model_dir)
    name = next(m.name for m in plan.modules.values() if m.active)
    before = lora_layers(model)[name].lora_B["default"].weight.detach().clone()
    with pytest.raises(PluginError, match="zeroes B, and with it the module's LoftQ correction"):
        apply_changes(model, plan, [deactivate(name, "test", on_deactivate="drop")], strategy="test", step=1)
    assert plan.modules[name].active and not plan.history
    assert torch.equal(lora_layers(model)[name].lora_B["default"].weight, before)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_loftq_all_inactive_arm_trains_and_merges_with_the_frozen_corrections(tiny_model_dir, data_file, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = config_dict(tiny_model_dir, data_file, tmp_path / "run", max_steps=3)
    cfg.update(quantizer=NF4, exporters=[{"name": "merged"}, {"name": "peft-adapter"}])
    cfg["allocator"]["options"].update(mode="all-inactive", alpha=4, lora_init={"name": "loftq"})
    pipe = Pipeline.from_dict(cfg)
    run = pipe.train()
    frozen = [m.name for m in run.plan.modules.values() if not m.active]
    assert frozen
    final = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    for name in frozen:  # frozen LoRAs hold their LoftQ correction, saved with the adapter
        assert final[f"base_model.model.{name}.lora_B.weight"].abs().max() > 0
    exports = pipe.export(Run.load(tmp_path / "run"))
    merged_dir = exports["merged"]
    card = (exports["peft-adapter"] / "README.md").read_text()
    assert "- **LoRA init:** peft LoftQ: every adapted module, frozen ones too" in card
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    stock = PeftModel.from_pretrained(_nf4_base(tiny_model_dir), tmp_path / "run" / "final").eval()
    want = _logits(stock, ids)
    got = _logits(AutoModelForCausalLM.from_pretrained(merged_dir).eval(), ids)
    assert (got - want).abs().max() / want.abs().max() <= 1e-4


def _eva_config(model_dir, data, out, **training):
    cfg = config_dict(model_dir, data, out, **training)
    cfg.update(quantizer=NF4, allocator={"name": "peft-targets", "options": {
        "rank": 4, "lora_init": {"name": "eva", "batches": 4, "eva": {"rho": 2.0}}}})
    return cfg


def test_eva_on_nf4_redistributes_ranks_and_the_plan_follows(tiny_model_dir, data_file, tmp_path):
    run = Pipeline.from_dict(_eva_config(tiny_model_dir, data_file, tmp_path / "run", max_steps=2)).train()
    ranks = {m.name: m.rank for m in run.plan.injected()}
    assert sum(ranks.values()) == 4 * 14  # EVA keeps the rank budget and moves it between modules
    assert len(set(ranks.values())) > 1
    assert {c.strategy for c in run.plan.history} == {"eva"}
    final = tmp_path / "run" / "final"
    stock = PeftModel.from_pretrained(_nf4_base(tiny_model_dir), final).eval()
    assert {n: layer.r["default"] for n, layer in lora_layers(stock).items()} == ranks
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(_logits(stock, ids), _logits(run.model.eval(), ids), atol=1e-5)
    assert run.plan.trainable_parameters() == sum(p.numel() for n, p in run.model.named_parameters()
                                                  if "lora_" in n)


def test_eva_init_is_peft_eva_components(tiny_model_dir, data_file, tmp_path):
    """Before training, every A holds orthonormal principal directions of its inputs (EVA, no whitening)."""
    from transformers import AutoTokenizer

    from spectra_core.data import collate, load_data

    pipe = Pipeline.from_dict(_eva_config(tiny_model_dir, data_file, tmp_path / "x"))
    plan = pipe.plan()

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = load_data(pipe.config.data, tok, seed=0)
    batches = lambda n: [collate(data.train[2 * i:2 * i + 2], tok.pad_token_id) for i in range(n)]  # noqa: E731
    model = build_peft_model(_nf4_base(tiny_model_dir), plan, batches=batches)
    for layer in lora_layers(model).values():
        a = layer.lora_A["default"].weight.float()
        assert torch.allclose(a @ a.T, torch.eye(a.shape[0]), atol=1e-4)


def test_eva_run_resumes_bitwise(tiny_model_dir, data_file, tmp_path):
    kw = {"max_steps": 4, "save_every": 2, "keep_checkpoints": 3}
    assert_resumes_bitwise(lambda out: _eva_config(tiny_model_dir, data_file, out, **kw), tmp_path, 4)
