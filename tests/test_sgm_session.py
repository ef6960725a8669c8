"""SGM on a live session (tiny random Llama, float32, real peft): sketch, errors, tying, project merge, regroup."""

from __future__ import annotations

import pytest
import torch

from spectra_core.adapters import lora_layers
from spectra_core.calibration import GradientSketch, projection
from spectra_core.changes import Tie
from spectra_core.errors import InputError, PluginError
from spectra_core.training.loss import causal_lm_loss
from spectra_core.training.modeling import build_peft_model
from spectra_core.training.optim import make_optimizer
from spectra_core.training.session import Session
from spectra_sgm import CosineGroups, CosineRegroup
from train_fixtures import make_plan, make_tiny_model

Q = [f"model.layers.{i}.self_attn.q_proj" for i in range(3)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("sgm") / "model", layers=3)


def batches(n: int, *, labels: bool = True) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        ids = torch.randint(4, 200, (2, 12), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "labels": ids.clone() if labels else torch.full_like(ids, -100)})
    return out


def session(model_dir, *, groups: dict[str, list[str]] | None = None, labels: bool = True,
            merger=None) -> Session:
    """A live session; ``groups`` are tied the way the trainer ties a merger's calibration (Tie changes)."""
    from transformers import AutoModelForCausalLM

    plan = make_plan(model_dir, rank=4)
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), plan, seed=0)
    model.train()
    s = Session(model, plan, make_optimizer(model, plan, 1e-3, 0.0), lr=1e-3, merger=merger,
                batches=lambda n: batches(n, labels=labels))
    s.apply([Tie(group=gid, modules=ms, reason="test") for gid, ms in (groups or {}).items()], strategy="test")
    return s


def factor(layer, which: str) -> torch.Tensor:
    return getattr(layer, which)["default"].weight


def lora(s: Session) -> dict[str, torch.nn.Module]:
    return lora_layers(s.model)


def randomize_lora(s: Session, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in s.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_sketch_is_dense_gradient_times_fixed_projection(model_dir):
    s = session(model_dir)
    layer = lora(s)[Q[1]]
    base = layer.get_base_layer()
    base.weight.requires_grad_(True)
    with GradientSketch({Q[1]: layer}, dim=8, seed=5) as sketch:
        loss, _ = causal_lm_loss(s.model, batches(1)[0])
        loss.backward()
    expected = base.weight.grad @ projection(base.in_features, 8, 5)
    assert torch.allclose(sketch.sketches[Q[1]], expected, rtol=1e-4, atol=1e-6)


def test_zero_gradients_are_refused_by_name(model_dir):
    s = session(model_dir, labels=False)  # no label token: no loss, no gradient
    with pytest.raises(InputError, match="all zero") as err:
        s.gradient_signals(Q, batches=2, dim=8, seed=0)
    assert Q[0] in str(err.value)


def test_nan_gradients_are_refused_by_name(model_dir):
    s = session(model_dir)
    with torch.no_grad():
        lora(s)[Q[2]].get_base_layer().weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="not finite") as err:
        s.gradient_signals([Q[2]], batches=1, dim=8, seed=0)
    assert Q[2] in str(err.value)


def test_a_group_mixing_shapes_is_refused_and_nothing_is_applied(model_dir):
    k = "model.layers.1.self_attn.k_proj"  # 32×64, q_proj is 64×64
    s = session(model_dir)
    before = {n: p.detach().clone() for n, p in s.model.named_parameters() if "lora_" in n}
    with pytest.raises(PluginError, match="members differ in shape") as err:
        s.apply([Tie(group="g1", modules=Q[1:], reason="ok"), Tie(group="g0", modules=[Q[0], k], reason="x")],
                strategy="test")
    assert "'test'" in str(err.value) and "none applied" in str(err.value)
    assert s.plan.groups() == {} and not s.plan.history
    assert all(torch.equal(p, before[n]) for n, p in s.model.named_parameters() if "lora_" in n)


def test_tied_group_is_one_parameter_for_the_optimizer(model_dir):
    s = session(model_dir, groups={"g0": Q})
    layers = lora(s)
    for f in ("lora_A", "lora_B"):
        assert len({factor(layers[q], f).data_ptr() for q in Q}) == 1
    params = [p for g in s.optimizer.param_groups for p in g["params"]]
    assert len({id(p) for p in params}) == len(params)
    assert sum(p.numel() for p in params) == s.plan.trainable_parameters()
    assert s.plan.trainable_parameters() == sum(m.lora_params() for m in s.plan.active()) - 2 * Q_PARAMS
    assert [c.field for c in s.plan.history] == ["group"] * 3


Q_PARAMS = 4 * (64 + 64)  # one q_proj LoRA at rank 4


def test_project_merge_is_weighted_sum_of_member_gradients(model_dir):
    merger = CosineGroups({"merge": "project", "project_rank": 1})
    untied, tied = session(model_dir), session(model_dir, merger=merger)
    randomize_lora(untied)
    randomize_lora(tied)
    tied.apply([Tie(group="g0", modules=Q, reason="test")], strategy="test")  # members take layer 0's values
    with torch.no_grad():
        for q in Q:
            for f in ("lora_A", "lora_B"):
                factor(lora(untied)[q], f).copy_(factor(lora(tied)[Q[0]], f))
    batch = batches(1)[0]
    for s in (untied, tied):
        with s.training_pass():
            loss, n = causal_lm_loss(s.model, batch)
            (loss / n).backward()
    tied.merge_gradients()
    for f in ("lora_A", "lora_B"):
        m = torch.stack([factor(lora(untied)[q], f).grad.reshape(-1) for q in Q]).double()
        _, vectors = torch.linalg.eigh(m @ m.T)
        u = vectors[:, -1:]
        expected = (u @ (u.T @ torch.ones(3, dtype=torch.float64))) @ m
        got = factor(lora(tied)[Q[0]], f).grad.reshape(-1).double()
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)
        assert not torch.allclose(got, m.sum(0), rtol=1e-3)  # the projection changed the plain sum


def test_member_gradients_are_captured_only_in_training_passes(model_dir):
    merger = CosineGroups({"merge": "project"})
    s = session(model_dir, groups={"g0": Q}, merger=merger)
    loss, n = causal_lm_loss(s.model, batches(1)[0])  # e.g. a calibration pass: not captured
    (loss / n).backward()
    summed = factor(lora(s)[Q[0]], "lora_A").grad.clone()
    s.merge_gradients()
    assert torch.equal(factor(lora(s)[Q[0]], "lora_A").grad, summed)  # no member gradients: the sum stays


def test_regroup_records_history_and_reties(model_dir):
    s = session(model_dir)
    randomize_lora(s)
    layers = lora(s)
    deltas = {q: factor(layers[q], "lora_B") @ factor(layers[q], "lora_A") for q in Q}
    proposed = CosineRegroup({"threshold": -1.0, "max_group_size": 3, "calibration_batches": 1}).rebalance(s)
    assert s.plan.groups() == {}  # proposed, not applied
    changes = s.apply(proposed, strategy="cosine-regroup")
    groups = s.plan.groups()
    assert changes and all(c.strategy == "cosine-regroup" and c.field == "group" for c in changes)
    assert {len(ms) for ms in groups.values()} == {3}  # every type: its 3 layers in one group
    q_group = next(ms for ms in groups.values() if ms == Q)
    head = layers[q_group[0]]
    for q in Q:
        assert factor(layers[q], "lora_A") is factor(head, "lora_A")
    mean = sum(deltas.values()) / 3
    u, sv, vh = torch.linalg.svd(mean)
    best = (u[:, :4] * sv[:4]) @ vh[:4]
    assert torch.allclose(factor(head, "lora_B") @ factor(head, "lora_A"), best, atol=1e-5)
    # the same groups again: relabelled only, parameters kept
    kept = factor(head, "lora_A")
    s.apply(CosineRegroup({"threshold": -1.0, "max_group_size": 3, "calibration_batches": 1}).rebalance(s),
            strategy="cosine-regroup")
    assert factor(layers[q_group[0]], "lora_A") is kept
    # regrouping with an unreachable threshold splits every group; members keep the shared values
    s.apply(CosineRegroup({"threshold": 1.0, "calibration_batches": 1}).rebalance(s), strategy="cosine-regroup")
    assert s.plan.groups() == {}
    assert len({factor(layers[q], "lora_A").data_ptr() for q in Q}) == 3
    assert all(torch.equal(factor(layers[q], "lora_A"), factor(layers[Q[0]], "lora_A")) for q in Q)
