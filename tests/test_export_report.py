"""report: report.md/report.json with config, plugins, plan, history, metrics; figures when they apply."""

from __future__ import annotations

import json

import pytest
from export_fixtures import config_data, make_run, scores_of

from spectra_core.config import load_config
from spectra_core.export.report import ReportExporter, read_metrics, summarize_metrics
from spectra_core.plan import AdapterPlan
from spectra_core.run import Run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("report"))


def _run(fx, run_dir=None, plan: AdapterPlan | None = None, scores=True) -> Run:
    config = load_config(data=config_data(fx.base_dir, fx.run_dir), registry=fx.registry)
    plan = plan or fx.plan
    return Run(run_dir or fx.run_dir, config, plan, scores_of(plan) if scores else None, registry=fx.registry)


def test_report_of_a_full_run(fixture, tmp_path):
    out = ReportExporter().export(_run(fixture), tmp_path / "report")
    data = json.loads((out / "report.json").read_text())
    assert data["config"]["allocator"]["name"] == "export-fixture"
    assert {"name": "core", "distribution": "spectra-qlora"}.items() <= data["plugins"][0].items()
    assert len(data["plan"]["modules"]) == len(fixture.plan.modules)
    assert [c["field"] for c in data["history"]] == ["group", "group", "active"]
    metrics = data["metrics"]
    assert metrics["train"]["first"] == {"step": 1, "loss": 5.7} and metrics["train"]["last"] == {"step": 3, "loss": 4.4}
    assert metrics["eval"]["before"] == {"step": 0, "loss": 5.6} and metrics["eval"]["after"] == {"step": 3, "loss": 4.9}
    assert metrics["skipped_lines"] == 1
    params = data["parameters"]
    shared = 4 * (64 + 32)  # one k_proj LoRA counted once
    assert params["trainable"] == params["trainable_without_sharing"] - shared == fixture.plan.trainable_parameters()
    assert params["stored_in_adapter"] == params["trainable_without_sharing"]
    assert data["figures"] == {"loss": "loss_curve.png", "scores": "snr_heatmap.png", "ranks": "ranks.png",
                               "groups": "groups.png"}
    for name in data["figures"].values():
        assert (out / name).read_bytes().startswith(PNG)
    md = (out / "report.md").read_text()
    for text in ("## Plan history", "low SNR after training", "| held-out, after | 3 | 4.9000 |",
                 "![ranks](ranks.png)", "spectra-qlora", "allocator `export-fixture`"):
        assert text in md


def test_report_draws_only_what_applies(fixture, tmp_path):
    """No metrics, no scores, one rank, no groups, no final/: text only, with placeholders."""
    plan = fixture.plan.model_copy(deep=True)
    for m in plan.modules.values():
        m.rank, m.group = 4, None
    empty_run_dir = tmp_path / "run"
    empty_run_dir.mkdir()
    out = ReportExporter().export(_run(fixture, empty_run_dir, plan, scores=False), tmp_path / "report")
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]
    data = json.loads((out / "report.json").read_text())
    assert data["parameters"]["stored_in_adapter"] is None and data["metrics"]["train"]["first"] is None
    assert "| train, first | – | – |" in (out / "report.md").read_text()


def test_metrics_are_read_tolerantly(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join([
        '{"step": 2, "loss": 1.5}', "", "garbage", "[1, 2]", '{"loss": 3.0}', '{"step": 1, "loss": NaN}',
        '{"step": true, "loss": 1.0}', '{"step": 1, "loss": 2.0, "lr": 0.1}', '{"step": 2, "eval_loss": 1.8}',
        '{"step": 0, "eval_loss": "high"}', '{"step": 3, "event": "rebalance"}']) + "\n")
    records, skipped = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 2] and skipped == 4  # garbage, list, no step, bool step
    summary = summarize_metrics(path)
    assert summary["train"]["first"] == {"step": 1, "loss": 2.0} and summary["train"]["min"] == 1.5
    assert summary["eval"]["before"] == summary["eval"]["after"] == {"step": 2, "loss": 1.8}
    assert read_metrics(tmp_path / "absent.jsonl") == ([], 0)
