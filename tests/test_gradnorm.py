"""The data-aware ``grad-norm`` scorer through Pipeline.scan and the CLI (tiny random Llama, real data files)."""

from __future__ import annotations

import math
import subprocess

import pytest
import yaml

from spectra_core.pipeline import Pipeline
from spectra_core.plan import AdapterPlan
from train_fixtures import cli_env, config_dict, make_tiny_model, spectra_cmd, write_text

SCORER = {"name": "grad-norm", "options": {"calibration_batches": 3, "sketch_dim": 64}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradnorm")
    return make_tiny_model(root / "model", layers=2), root


def scan(setup, text_seed: int = 0, **overrides):
    model_dir, root = setup
    data = write_text(root / f"text{text_seed}.txt", n=150, seed=text_seed)
    cfg = {**config_dict(model_dir, data, root / "run"), "scorer": SCORER, **overrides}
    return Pipeline.from_dict(cfg).scan()


@pytest.fixture(scope="module")
def first(setup):
    return scan(setup)


def test_scores_are_deterministic_positive_finite_and_data_dependent(setup, first):
    again, other = scan(setup), scan(setup, text_seed=5)
    values = [m.score for m in first.modules]
    assert first.scorer == "grad-norm" and len(values) == 2 * 7
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert values == [m.score for m in again.modules]
    changed = [abs(a - b.score) / a for a, b in zip(values, other.modules)]
    assert max(changed) > 0.05, changed
    assert [m.name for m in first.modules] == [m.name for m in other.modules]


def test_plan_cli_with_grad_norm(setup, first, tmp_path):
    model_dir, root = setup
    data = write_text(tmp_path / "text.txt", n=150)
    cfg = {**config_dict(model_dir, data, tmp_path / "run"), "scorer": SCORER}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run(spectra_cmd("plan", str(path), "--out", str(tmp_path / "plan.json")), capture_output=True,
                         text=True, env=cli_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    assert "trainable parameters" in res.stdout
    plan = AdapterPlan.load(tmp_path / "plan.json")
    assert len(plan.active()) == 7  # top_fraction 0.5 of 2 layers: one module per type
    direct = {m.name: m.score for m in first.modules}
    for m in plan.active():  # the higher-gradient module of each type was chosen
        twin = next(o for o in plan.modules.values() if o.type == m.type and o.name != m.name)
        assert m.score == pytest.approx(direct[m.name]) and m.score >= twin.score


def test_scan_cli_refuses_a_data_aware_scorer(setup):
    res = subprocess.run(spectra_cmd("scan", str(setup[0]), "--scorer", "grad-norm", "--no-cache", "--quiet",
                                     "--out", str(setup[1] / "scan")),
                         capture_output=True, text=True, env=cli_env(), timeout=300)
    assert res.returncode == 2 and "needs training data" in res.stderr, res.stderr


def test_config_without_data_is_refused(setup):
    model_dir, root = setup
    cfg = {**config_dict(model_dir, write_text(root / "t.txt"), root / "run"), "scorer": SCORER}
    del cfg["data"]
    from spectra_core.errors import InputError

    with pytest.raises(InputError, match="needs training data"):
        Pipeline.from_dict(cfg).scan()
