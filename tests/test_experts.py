"""MoE experts as plan entries of their own (spectra_core.experts) on a tiny random Mixtral (4 experts ×
2 layers, fused 3-D tensors): per-type selection across layers and experts, per-expert ranks and LR
scales realised on peft's one LoRA per fused tensor, frozen experts that never move, per-expert resize,
and the refusals (experts of one tensor at different LoRA scales, experts sharing a LoRA)."""

from __future__ import annotations

import pytest
import torch
from arch_fixtures import make_model
from train_fixtures import assert_resumes_bitwise, config_dict, write_text

from spectra_core.adapters import delta, factors, inject, lora_layers
from spectra_core.builtins.quantizers import NoQuantizer
from spectra_core.changes import Tie, resize
from spectra_core.config import TargetsConfig
from spectra_core.errors import ConfigError, PluginError
from spectra_core.expert_plan import split
from spectra_core.models import find_targets
from spectra_core.pipeline import Pipeline
from spectra_core.plan import AdapterPlan, ModulePlan
from spectra_core.training.optim import make_optimizer
from spectra_core.training.session import Session

GATE_UP = "model.layers.0.mlp.experts.gate_up_proj"


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    return make_model("mixtral", tmp_path_factory.mktemp("moe") / "mixtral")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_text(tmp_path_factory.mktemp("moe-data") / "train.txt", n=40)


def expert_plan(model_dir, **experts: tuple[bool, int, float, float]) -> AdapterPlan:
    """Every expert of GATE_UP per ``experts`` (``e{i}=(active, rank, alpha, lr_scale)``); all else off."""
    modules = {}
    for t in find_targets(model_dir, TargetsConfig()):
        active, rank, alpha, lr_scale = experts.get(f"e{split(t.name)[1]}", (False, 0, 0.0, 1.0)) \
            if t.name.startswith(GATE_UP + ".") else (False, 0, 0.0, 1.0)
        modules[t.name] = ModulePlan(name=t.name, type=t.type, kind=t.kind, shape=t.shape(), active=active,
                                     rank=rank, alpha=alpha, lr_scale=lr_scale)
    return AdapterPlan(allocator="test", modules=modules)


def expert_delta(layer, index: int) -> torch.Tensor:
    return delta(layer)[index].double()


def test_experts_are_selected_per_type_across_layers_and_experts(mixtral, corpus, tmp_path):
    """hybrid's top 25 % of each type chooses among the 8 experts (2 layers × 4) of each fused tensor kind,
    by the scan's per-expert scores; routers stay out."""
    cfg = config_dict(mixtral, corpus, tmp_path / "run")
    cfg["scorer"] = {"name": "spectrum"}
    cfg["allocator"]["options"] = {"rank": 2, "alpha": 4, "top_fraction": 0.25}
    pipe = Pipeline.from_dict(cfg)
    scores = pipe.scan(progress=False)
    plan = pipe.plan(scores)
    experts = [m for m in plan.modules.values() if m.kind == "expert"]
    assert {m.type for m in experts} == {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
    assert not any("gate." in m.name or m.name.endswith(".gate") for m in plan.modules.values())
    by_score = scores.by_name()
    for kind in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
        members = [m for m in experts if m.type == kind]
        assert len(members) == 8
        best = sorted(members, key=lambda m: by_score[m.name].score, reverse=True)[:2]
        assert {m.name for m in members if m.active} == {m.name for m in best}
    assert plan.trainable_parameters() == sum(m.rank * sum(m.shape) for m in plan.active())


def test_expert_ranks_and_frozen_experts_train_as_planned(mixtral, corpus, tmp_path):
    """Expert 0 at rank 2, expert 1 at rank 1 (same scale), expert 2 without LoRA, expert 3 frozen at rank 2
    (all-inactive): after training, only 0 and 1 moved; expert 1's update has rank 1; 2 and 3 are bitwise
    what they started as; the adapter holds the tensor at rank 2 and stock peft loads it."""
    from peft import PeftModel

    plan = expert_plan(mixtral, e0=(True, 2, 4.0, 1.0), e1=(True, 1, 2.0, 1.0), e3=(False, 2, 4.0, 1.0))
    plan.mode = "all-inactive"
    start = inject(NoQuantizer().load(mixtral), plan, seed=0)
    a0, b0 = (p.detach().clone() for p in factors(lora_layers(start)[GATE_UP]).values())
    pipe = Pipeline.from_dict(config_dict(mixtral, corpus, tmp_path / "run", max_steps=3, eval_every=3, save_every=3))
    run = pipe.train(plan)
    model = PeftModel.from_pretrained(NoQuantizer().load(mixtral), run.run_dir / "final")
    layer = lora_layers(model)[GATE_UP]
    a, b = factors(layer)["A"].detach(), factors(layer)["B"].detach()
    assert layer.r["default"] == 2 and a.shape[0] == 4 * 2
    rows, cols = a.view(4, 2, -1), b.view(b.shape[0], 2, 4)
    assert float(expert_delta(layer, 0).norm()) > 0 and float(expert_delta(layer, 1).norm()) > 0
    assert torch.linalg.matrix_rank(expert_delta(layer, 1), rtol=1e-5) == 1  # float32 update: noise below 1e-5
    assert float(rows[1, 1].abs().max()) == 0 and float(cols[:, 1, 1].abs().max()) == 0
    assert float(expert_delta(layer, 2).abs().max()) == 0 and float(rows[2].abs().max()) == 0
    torch.testing.assert_close(rows[3], a0.view(4, 2, -1)[3], rtol=0, atol=0)  # frozen: weight decay did not move it
    torch.testing.assert_close(cols[:, :, 3], b0.view(b0.shape[0], 2, 4)[:, :, 3], rtol=0, atol=0)
    assert run.plan.trainable_parameters() == 2 * sum(plan.modules[f"{GATE_UP}.0"].shape) + \
        sum(plan.modules[f"{GATE_UP}.1"].shape)


def test_an_experts_lr_scale_scales_its_step_exactly(mixtral):
    """Expert 1 at LR scale 0.5 moves exactly half as far in one AdamW step as it does at scale 1 (the
    tensor's optimizer group runs at the largest scale of its experts, 1 here)."""
    steps = {}
    for scale in (1.0, 0.5):
        plan = expert_plan(mixtral, e0=(True, 2, 4.0, 1.0), e1=(True, 2, 4.0, scale))
        model = inject(NoQuantizer().load(mixtral), plan, seed=0)
        with torch.no_grad():  # B = 0 would give A no gradient: start from a non-zero update
            factors(lora_layers(model)[GATE_UP])["B"].normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
        optimizer = make_optimizer(model, plan, lr=1e-2, weight_decay=0.1)
        session = Session(model, plan, optimizer)
        before = {k: p.detach().clone() for k, p in factors(lora_layers(model)[GATE_UP]).items()}
        model(input_ids=torch.tensor([[5, 17, 42, 99, 7, 3]])).logits.square().mean().backward()
        session.expert_steps.before_step()
        optimizer.step()
        session.expert_steps.after_step()
        steps[scale] = {k: p.detach() - before[k] for k, p in factors(lora_layers(model)[GATE_UP]).items()}
    full, half = steps[1.0], steps[0.5]
    torch.testing.assert_close(half["A"].view(4, 2, -1)[1], 0.5 * full["A"].view(4, 2, -1)[1], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(half["A"].view(4, 2, -1)[0], full["A"].view(4, 2, -1)[0], rtol=0, atol=0)
    assert float(full["A"].view(4, 2, -1)[1].abs().max()) > 0
    assert float(half["A"].view(4, 2, -1)[2].abs().max()) == 0  # no LoRA: never moves


def test_an_expert_is_resized_on_its_own(mixtral):
    """Shrinking expert 0 keeps its best rank-1 update; growing expert 1 past the tensor's rank grows the
    tensor (every other update unchanged) and keeps expert 1's update."""
    plan = expert_plan(mixtral, e0=(True, 2, 4.0, 1.0), e1=(True, 2, 4.0, 1.0), e3=(True, 2, 4.0, 1.0))
    model = inject(NoQuantizer().load(mixtral), plan, seed=0)
    layer = lora_layers(model)[GATE_UP]
    with torch.no_grad():
        factors(layer)["B"].normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    session = Session(model, plan, make_optimizer(model, plan, lr=1e-3, weight_decay=0.0))
    before = {e: expert_delta(layer, e) for e in range(4)}
    session.apply([resize(f"{GATE_UP}.0", 1, "test", alpha=2.0), resize(f"{GATE_UP}.1", 3, "test", alpha=6.0)],
                  strategy="test")
    layer = lora_layers(model)[GATE_UP]
    u, s, vh = torch.linalg.svd(before[0])
    torch.testing.assert_close(expert_delta(layer, 0), (u[:, :1] * s[:1]) @ vh[:1], rtol=1e-4, atol=1e-7)
    assert layer.r["default"] == 3
    for e in (1, 2, 3):
        torch.testing.assert_close(expert_delta(layer, e), before[e], rtol=1e-5, atol=1e-8)
    assert session.adapter(f"{GATE_UP}.1").rank == 3 and session.adapter(f"{GATE_UP}.0").rank == 1
    handle = session.adapter(f"{GATE_UP}.0")  # Mixtral stores its experts out × in, as handles give them
    assert handle.kind == "expert" and handle.shape == plan.modules[f"{GATE_UP}.0"].shape
    torch.testing.assert_close(handle.delta().double(), expert_delta(layer, 0), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(handle.effective_weight(), handle.base_weight() + handle.delta())


def test_experts_of_one_tensor_at_two_lora_scales_are_refused(mixtral):
    plan = expert_plan(mixtral, e0=(True, 2, 4.0, 1.0), e1=(True, 1, 4.0, 1.0))
    with pytest.raises(ConfigError, match="LoRA scales"):
        inject(NoQuantizer().load(mixtral), plan, seed=0)


def test_experts_and_modules_cannot_share_a_lora(mixtral):
    plan = expert_plan(mixtral, e0=(True, 2, 4.0, 1.0), e1=(True, 2, 4.0, 1.0))
    plan.modules["model.layers.0.self_attn.q_proj"].active = True
    plan.modules["model.layers.0.self_attn.q_proj"].rank = 2
    model = inject(NoQuantizer().load(mixtral), plan, seed=0)
    session = Session(model, plan)
    with pytest.raises(PluginError, match="mixes MoE experts"):
        session.apply([Tie(group="g0", modules=[f"{GATE_UP}.0", "model.layers.0.self_attn.q_proj"], reason="t")],
                      strategy="test")


def test_an_experts_gradient_sketch_is_its_dense_gradient_projected(mixtral, corpus):
    """Calibration sketches an expert through extra LoRA components (A = Rᵀ, B = 0): the sketch equals the
    fused tensor's exact dense gradient for that expert times R, and the model's LoRA is put back."""
    from spectra_core.calibration import collect_gradient_signals, projection
    from spectra_core.data import collate

    plan = expert_plan(mixtral, e0=(True, 2, 4.0, 1.0), e2=(True, 2, 4.0, 1.0))
    model = inject(NoQuantizer().load(mixtral), plan, seed=0)
    layer = lora_layers(model)[GATE_UP]
    a_before = factors(layer)["A"]
    batch = collate([{"input_ids": [5, 17, 42, 99, 7, 3, 250, 11], "labels": [5, 17, 42, 99, 7, 3, 250, 11]}], 0)
    signals = collect_gradient_signals(model, lora_layers(model), lambda n: [batch] * n,
                                       [f"{GATE_UP}.0", f"{GATE_UP}.2"], batches=1, dim=8, seed=3)
    assert factors(layer)["A"] is a_before and layer.lora_A["default"].weight.shape[0] == 4 * 2
    weight = layer.get_param()  # the fused base tensor: its exact gradient, for comparison
    weight.requires_grad_(True)
    from spectra_core.training.loss import causal_lm_loss

    loss, n = causal_lm_loss(model, batch)
    (loss / n).backward()
    for e in (0, 2):
        g = weight.grad[e] if layer._did_swap_in_out_features else weight.grad[e].T  # peft's out × in
        want = g.float() @ projection(g.shape[1], 8, 3)
        torch.testing.assert_close(signals[f"{GATE_UP}.{e}"], want, rtol=1e-3, atol=1e-7)


def test_sgm_groups_experts_within_and_across_layers(mixtral, corpus, tmp_path):
    """method sgm with every expert a candidate (threshold -1: every bucket merges up to 4 members):
    experts share LoRAs, trained members stay bitwise equal, the group counts once, and the merged export
    equals stock peft's adapter."""
    from test_architectures import check_against_stock_peft

    cfg = config_dict(mixtral, corpus, tmp_path / "run", max_steps=3, eval_every=3, save_every=3)
    cfg = {k: v for k, v in cfg.items() if k not in ("quantizer", "scorer", "allocator")} | {"method": "sgm"}
    cfg["quantizer"] = {"name": "none"}
    cfg["allocator"] = {"options": {"top_fraction": 1.0, "rank": 2, "alpha": 4}}
    cfg["gradient_merger"] = {"name": "cosine-groups", "options": {"threshold": -1.0, "calibration_batches": 2}}
    cfg["exporters"] = [{"name": "peft-adapter"}, {"name": "merged"}]
    pipe = Pipeline.from_dict(cfg)
    run = pipe.train()
    groups = {g: ms for g, ms in run.plan.groups().items() if run.plan.modules[ms[0]].kind == "expert"}
    assert groups and all(len(ms) <= 4 for ms in groups.values())
    assert any(len({m.split(".mlp.")[0] for m in ms}) == 1 for ms in groups.values())  # within one layer
    model = run.peft_model()
    layers = lora_layers(model)
    for members in groups.values():
        slices = [expert_slices_of(layers, run.plan, m) for m in members]
        assert float(slices[0][1].abs().max()) > 0, "the shared LoRA did not train"
        for a, b in slices[1:]:
            torch.testing.assert_close(a, slices[0][0], rtol=0, atol=0)
            torch.testing.assert_close(b, slices[0][1], rtol=0, atol=0)
    alone = sum(m.lora_params() for m in run.plan.active())
    shared = sum(run.plan.modules[ms[0]].lora_params() * (len(ms) - 1) for ms in run.plan.groups().values())
    assert run.plan.trainable_parameters() == alone - shared
    paths = pipe.export(run)
    check_against_stock_peft("mixtral", NoQuantizer().load(mixtral), run.run_dir / "final", paths["merged"], run.plan)


def expert_slices_of(layers, plan, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    from spectra_core.adapters import expert_slices

    tensor, index = split(name)
    return tuple(t.detach() for t in expert_slices(layers[tensor], index, plan.modules[name].rank))


def test_a_fused_layout_checkpoint_is_scanned_per_expert(mixtral, tmp_path):
    """A checkpoint that stores the experts fused (3-D ``experts.gate_up_proj``, as the loaded model holds
    them) is scanned straight from its files, one score per expert slice, equal to the scores of the
    same weights stored expert by expert (the fixture, which transformers saves in Mixtral's own layout)."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    from spectra_core.builtins.scorers import SpectrumScorer
    from spectra_core.target_scan import load_float, scan_targets

    fused = tmp_path / "fused"
    fused.mkdir()
    state = {k: v.detach().clone().contiguous() for k, v in load_float(mixtral).state_dict().items()}
    save_file(state, str(fused / "model.safetensors"), metadata={"format": "pt"})
    for f in mixtral.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, fused / f.name)
    with safe_open(str(fused / "model.safetensors"), "pt") as fh:
        assert fh.get_slice(f"{GATE_UP}").get_shape() == [4, 128, 64]
    targets = find_targets(fused, TargetsConfig())
    experts = [t.name for t in targets if t.kind == "expert"]
    assert f"{GATE_UP}.3" in experts and len(experts) == 2 * 2 * 4
    got = scan_targets(fused, SpectrumScorer(), targets, progress=False).by_name()
    want = scan_targets(mixtral, SpectrumScorer(), find_targets(mixtral, TargetsConfig()), progress=False).by_name()
    assert set(got) == set(want) and set(experts) <= set(got)
    for name in experts:
        assert got[name].score == pytest.approx(want[name].score, rel=1e-6)
        assert got[name].type == plan_type(name)


def plan_type(name: str) -> str:
    return "mlp.experts." + name.rsplit(".", 2)[1]


def test_a_run_with_per_expert_plans_resumes_bitwise(mixtral, corpus, tmp_path):
    """Mixed expert ranks, LR scales and frozen experts (all-inactive): a run resumed from its step-2
    checkpoint ends bitwise where the uninterrupted one does."""
    plan = expert_plan(mixtral, e0=(True, 2, 4.0, 1.0), e1=(True, 1, 2.0, 0.5), e3=(False, 2, 4.0, 1.0))
    plan.mode = "all-inactive"
    kw = {"max_steps": 4, "save_every": 2, "keep_checkpoints": 3, "eval_every": 4, "weight_decay": 0.01}
    assert_resumes_bitwise(lambda out: config_dict(mixtral, corpus, out, **kw), tmp_path, 4, plan)
