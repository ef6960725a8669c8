"""`python benchmarks/methods.py --quick` from the repository: every arm runs on the bundled real weights and
the table, plot and raw JSON are written (slow: ~7 min on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from train_fixtures import ROOT, cli_env


@pytest.mark.slow
def test_quick_run_writes_table_plot_and_json(tmp_path):
    docs, out = tmp_path / "docs", tmp_path / "results.json"
    cmd = [sys.executable, "benchmarks/methods.py", "--quick", "--docs", str(docs), "--out", str(out),
           "--work", str(tmp_path / "work")]
    res = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=2400)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    arms = [r["arm"] for r in data["rows"]]
    assert data["complete"] and not [r for r in data["results"] if "error" in r]
    assert len(arms) == 10 and {"qlora-all", "hybrid-random", "spectrum-25-full", "adalora"} <= set(arms)
    for row in data["rows"]:
        assert row["trainable_parameters"] > 0 and row["step_time_s"] > 0 and row["loss"] < row["start"] + 0.05
    table = (docs / "benchmarks.md").read_text()
    assert all(f"| {arm} |" in table for arm in arms) and "img/methods-quick.png" in table
    assert (docs / "img" / "methods-quick.png").stat().st_size > 10_000
