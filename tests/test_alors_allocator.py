"""alors-tiers: tiers per type, rsLoRA, budget mode within 1 %, and bad input refused at config/plan time."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from spectra_alors.allocator import AlorsTiers
from spectra_alors.budget import uniform_budget
from spectra_core.adapters import lora_config_kwargs
from spectra_core.config import load_config
from spectra_core.errors import ConfigError, InputError
from spectra_core.scores import ModuleScore, Scores
from spectra_core.strategies import TargetModule

# SmolLM2-135M's linear layers: (type, out, in)
SMOL = [("self_attn.q_proj", 576, 576), ("self_attn.k_proj", 192, 576), ("self_attn.v_proj", 192, 576),
        ("self_attn.o_proj", 576, 576), ("mlp.gate_proj", 1536, 576), ("mlp.up_proj", 1536, 576),
        ("mlp.down_proj", 576, 1536)]


def smol_targets(layers: int = 30) -> list[TargetModule]:
    return [TargetModule(name=f"model.layers.{i}.{t}", type=t, out_features=o, in_features=n)
            for i in range(layers) for t, o, n in SMOL]


def scores_for(targets: list[TargetModule], seed: int = 0) -> Scores:
    rng = random.Random(seed)
    return Scores(scorer="test", modules=[ModuleScore(name=t.name, type=t.type, score=rng.uniform(0, 10))
                                          for t in targets])


def allocate(targets=None, **options):
    targets = targets or smol_targets()
    return AlorsTiers(options).allocate(scores_for(targets), targets)


def test_quantile_tiers_per_type_with_rslora_and_lr_scales():
    targets = smol_targets()
    scores = scores_for(targets)
    plan = AlorsTiers({"tiers": [
        {"name": "high", "quantile": [0, 0.25], "rank": 16, "alpha": 8, "lr_scale": 1.0},
        {"name": "medium", "quantile": [0.25, 0.5], "rank": 4, "alpha": 4, "lr_scale": 2.0},
        {"name": "low", "quantile": [0.5, 1], "rank": 0}]}).allocate(scores, targets)
    assert plan.use_rslora and plan.mode == "all-inactive"
    by_name = scores.by_name()
    for t, _, _ in SMOL:
        members = sorted((m for m in plan.modules.values() if m.type == t), key=lambda m: -by_name[m.name].score)
        assert [m.tier for m in members] == ["high"] * 7 + ["medium"] * 8 + ["low"] * 15
        assert {(m.rank, m.alpha, m.lr_scale, m.active) for m in members[:7]} == {(16, 8.0, 1.0, True)}
        assert {(m.rank, m.alpha, m.lr_scale, m.active) for m in members[7:15]} == {(4, 4.0, 2.0, True)}
        # frozen tier: a parked, frozen LoRA of the smallest trained rank (so it can be promoted)
        assert {(m.rank, m.active) for m in members[15:]} == {(4, False)}
    kwargs = lora_config_kwargs(plan)
    assert kwargs["use_rslora"] is True and kwargs["r"] == 4
    assert set(kwargs["rank_pattern"].values()) == {16}
    targeted = AlorsTiers({"mode": "targeted"}).allocate(scores, targets)
    assert {m.rank for m in targeted.modules.values() if m.tier == "low"} == {0}
    assert all(m.rank for m in targeted.injected())


def test_score_threshold_tiers():
    plan = allocate(by="score", tiers=[
        {"name": "high", "score": [7, None], "rank": 8, "alpha": 8},
        {"name": "low", "score": [None, 7], "rank": 0}])
    for m in plan.modules.values():
        assert (m.tier == "high") == (m.score >= 7)
        assert m.active == (m.tier == "high")


@pytest.mark.parametrize("options", [
    {"budget_uniform_rank": 8}, {"budget_uniform_rank": 2}, {"budget_uniform_rank": 32},
    {"budget": 1_234_567}, {"budget": 5_000_000, "use_rslora": False},
])
def test_budget_lands_within_one_percent(options):
    targets = smol_targets()
    budget = options.get("budget") or uniform_budget(targets, options["budget_uniform_rank"])
    plan = allocate(targets, **options)
    assert abs(plan.trainable_parameters() - budget) <= 0.01 * budget
    high = [m.rank for m in plan.active() if m.tier == "high"]
    medium = [m.rank for m in plan.active() if m.tier == "medium"]
    assert min(high) > max(medium) >= 1
    # the tier's scale factor is kept at the solved ranks
    for m in plan.active():
        scale = m.alpha / (m.rank ** 0.5 if plan.use_rslora else m.rank)
        assert scale == pytest.approx(2.0 if plan.use_rslora else (0.5 if m.tier == "high" else 1.0))


def test_budget_same_as_uniform_rank_on_a_tiny_model_shape():
    targets = smol_targets(layers=4)
    plan = allocate(targets, budget_uniform_rank=4, tiers=[
        {"name": "high", "quantile": [0, 0.5], "rank": 16, "alpha": 8},
        {"name": "low", "quantile": [0.5, 1], "rank": 0}])
    assert abs(plan.trainable_parameters() - uniform_budget(targets, 4)) <= 0.01 * uniform_budget(targets, 4)


def test_budget_out_of_range_is_refused_at_plan_time():
    targets = smol_targets()
    with pytest.raises(InputError, match="below one rank-1 LoRA"):
        allocate(targets, budget=1000)
    with pytest.raises(InputError, match="exceeds full rank"):
        allocate(targets, budget=10**9)


def test_tier_rank_larger_than_a_module_allows_is_refused_at_plan_time():
    with pytest.raises(InputError, match="rank ≤ 192"):
        allocate(tiers=[{"name": "high", "quantile": [0, 0.5], "rank": 256, "alpha": 16},
                        {"name": "low", "quantile": [0.5, 1], "rank": 0}])


@pytest.mark.parametrize(("tiers", "message"), [
    ([{"name": "a", "quantile": [0, 0.3], "rank": 8, "alpha": 8},
      {"name": "b", "quantile": [0.25, 1], "rank": 0}], "overlap"),
    ([{"name": "a", "quantile": [0, 0.25], "rank": 8, "alpha": 8},
      {"name": "b", "quantile": [0.3, 1], "rank": 0}], "gap"),
    ([{"name": "a", "quantile": [0.1, 0.5], "rank": 8, "alpha": 8},
      {"name": "b", "quantile": [0.5, 1], "rank": 0}], "gap"),
    ([{"name": "a", "quantile": [0, 0.5], "rank": 8, "alpha": 8},
      {"name": "b", "quantile": [0.5, 0.9], "rank": 0}], "gap"),
    ([{"name": "a", "quantile": [0, 0.5], "rank": 4, "alpha": 8},
      {"name": "b", "quantile": [0.5, 1], "rank": 8, "alpha": 8}], "strictly decrease"),
    ([{"name": "a", "score": [5, None], "rank": 8, "alpha": 8},
      {"name": "b", "score": [None, 6], "rank": 0}], "overlap"),
    ([{"name": "a", "score": [5, None], "rank": 8, "alpha": 8},
      {"name": "b", "score": [None, 4], "rank": 0}], "gap"),
])
def test_bad_tiers_are_config_errors(tmp_path, tiers, message):
    by = "score" if "score" in tiers[0] else "quantile"
    with pytest.raises(ValidationError, match=message):
        AlorsTiers.Options.model_validate({"by": by, "tiers": tiers})
    data = {"method": "alors", "model": {"source": str(tmp_path)},
            "allocator": {"name": "alors-tiers", "options": {"by": by, "tiers": tiers}}}
    with pytest.raises(ConfigError, match=message):
        load_config(data=data)


def test_budget_options_exclusive():
    with pytest.raises(ValidationError, match="either budget or budget_uniform_rank"):
        AlorsTiers.Options(budget=100, budget_uniform_rank=4)


def test_method_defaults(tmp_path):
    cfg = load_config(data={"method": "alors", "model": {"source": str(tmp_path)}})
    assert (cfg.quantizer.name, cfg.scorer.name, cfg.allocator.name, cfg.rebalancer.name) == (
        "bnb-nf4", "spectrum", "alors-tiers", "alors-resize")
    assert [e.name for e in cfg.exporters] == ["peft-adapter", "merged", "report"]
    assert cfg.training.gradient_checkpointing is True
    assert cfg.allocator.options.use_rslora is True
