"""hybrid's strategies on a tiny model: spectrum-top's selection, snr-reselect during and after training,
and the rebalancer's checks that fail before training instead of after it."""

from __future__ import annotations

import json
import random

import pytest
import torch

from spectra_core.adapters import lora_layers
from spectra_core.config import TargetsConfig
from spectra_core.errors import ConfigError
from spectra_core.models import find_targets
from spectra_core.pipeline import Pipeline
from spectra_core.registry import get_registry
from spectra_core.scores import ModuleScore, Scores
from train_fixtures import config_dict, tiny_model_dir, write_text  # noqa: F401 - fixture


def hybrid_config(model_dir, data, out, **rebalancer) -> dict:
    cfg = config_dict(model_dir, data, out)
    cfg["allocator"]["options"]["mode"] = "all-inactive"
    cfg["rebalancer"] = {"name": "snr-reselect", "options": {"scorer": {"name": "random", "options": {"seed": 7}},
                                                             **rebalancer}}
    cfg["exporters"] = []
    return cfg


@pytest.mark.parametrize("mode", ["targeted", "all-inactive"])
def test_spectrum_top_picks_the_top_fraction_of_each_type(tiny_model_dir, mode):  # noqa: F811
    targets = find_targets(tiny_model_dir, TargetsConfig())
    rng = random.Random(0)
    scores = Scores(scorer="test", modules=[ModuleScore(name=t.name, type=t.type, score=rng.random(),
                                                        shape=(t.out_features, t.in_features)) for t in targets])
    allocator = get_registry().create("allocator", "spectrum-top", {"top_fraction": 0.5, "rank": 4, "alpha": 8,
                                                                     "mode": mode})
    plan = allocator.allocate(scores, targets)
    for t in {s.type for s in scores.modules}:
        members = [s for s in scores.modules if s.type == t]
        best = max(members, key=lambda s: s.score).name
        assert [m.name for m in plan.modules.values() if m.type == t and m.active] == [best]
    inactive = [m for m in plan.modules.values() if not m.active]
    assert inactive and {m.rank for m in inactive} == ({0} if mode == "targeted" else {4})


def test_snr_reselect_keeps_counts_per_type_and_drops_deactivated_updates(tiny_model_dir, tmp_path):  # noqa: F811
    data = write_text(tmp_path / "train.txt", n=200)
    pipe = Pipeline.from_dict(hybrid_config(tiny_model_dir, data, tmp_path / "run", every_steps=2,
                                            on_deactivate="drop"))
    before = {m.name: m.active for m in pipe.plan().modules.values()}
    run = pipe.train()
    events = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "rebalance"] == [2, 4, 6]
    after = run.plan.modules
    for t in {m.type for m in after.values()}:
        assert sum(m.active for m in after.values() if m.type == t) == sum(
            before[m.name] for m in after.values() if m.type == t)
    dropped = [n for n, m in after.items() if before[n] and not m.active]
    kept = [n for n, m in after.items() if before[n] and m.active]
    assert dropped and kept, "the re-scoring moved no module (or all of them)"
    layers = lora_layers(run.model)
    assert all(float(layers[n].lora_B["default"].weight.abs().max()) == 0.0 for n in dropped)
    assert all(float(layers[n].lora_B["default"].weight.detach().abs().max()) > 0.0 for n in kept)
    assert {c.strategy for c in run.plan.history} == {"snr-reselect"}
    assert any(c.field == "active" and c.after is True for c in run.plan.history)


def test_snr_reselect_refuses_a_targeted_plan_before_training(tiny_model_dir, tmp_path):  # noqa: F811
    data = write_text(tmp_path / "train.txt", n=50)
    cfg = hybrid_config(tiny_model_dir, data, tmp_path / "run")
    cfg["allocator"]["options"]["mode"] = "targeted"
    with pytest.raises(ConfigError, match="needs LoRA in every target module") as info:
        Pipeline.from_dict(cfg).train()
    assert "all-inactive" in info.value.hint
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("options", "message"), [
    ({"scorer": {"name": "nope"}}, "unknown scorer 'nope'"),
    ({"scorer": {"name": "grad-norm"}}, "needs training data"),
    ({"scorer": {"name": "spectrum", "options": {"bogus": 1}}}, "invalid options for its scorer 'spectrum'"),
])
@pytest.mark.parametrize("rebalancer", ["snr-reselect", "alors-resize"])
def test_rescoring_rebalancers_check_their_scorer_when_the_config_loads(tiny_model_dir, tmp_path,  # noqa: F811
                                                                        rebalancer, options, message):
    cfg = hybrid_config(tiny_model_dir, tmp_path / "unused.txt", tmp_path / "run")
    cfg["rebalancer"] = {"name": rebalancer, "options": options}
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_dict(cfg)


@pytest.mark.parametrize(("run_scorer", "used", "why"), [
    ({"name": "mp"}, "mp", "the run's scorer"),
    ({"name": "grad-norm"}, "spectrum", "the run's scorer 'grad-norm' needs training data"),
])
def test_rescoring_defaults_to_the_runs_scorer_family(tiny_model_dir, tmp_path, run_scorer, used, why):  # noqa: F811
    cfg = hybrid_config(tiny_model_dir, tmp_path / "unused.txt", tmp_path / "run")
    cfg["scorer"], cfg["rebalancer"] = run_scorer, {"name": "snr-reselect"}
    pipe = Pipeline.from_dict(cfg)
    assert pipe.rebalancer.scorer.name == used and why in pipe.rescoring
    assert pipe.config.rebalancer.options.scorer.name == used  # recorded in the run's config.yaml


def test_effective_weights_do_not_count_a_merged_update_twice(tiny_model_dir):  # noqa: F811
    from peft import LoraConfig, get_peft_model

    from spectra_core.builtins.quantizers import NoQuantizer
    from spectra_core.spectral.sources import open_weights
    from spectra_core.adapters import effective_weight

    model = get_peft_model(NoQuantizer().load(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    name, layer = next(iter(lora_layers(model).items()))
    unmerged = effective_weight(layer)
    assert float((unmerged - layer.get_base_layer().weight).abs().max()) > 1e-3
    layer.merge(adapter_names=["default"])
    torch.testing.assert_close(effective_weight(layer), unmerged)
    torch.testing.assert_close(dict(open_weights(model, names=[name], effective=True))[name], unmerged)
