"""`python benchmarks/methods.py --quick --corpus kjv` from the repository: `spectra compare`'s quick budget
(every arm, 2 LRs, 5 steps) on the bundled KJV text with the real SmolLM2 weights; table, plot and raw
results are written (slow: ~15 min on 2 idle cores)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from train_fixtures import ROOT, cli_env


@pytest.mark.slow
def test_quick_compare_writes_tables_plots_and_results(tmp_path):
    docs, out = tmp_path / "docs", tmp_path / "out"
    cmd = [sys.executable, "benchmarks/methods.py", "--quick", "--corpus", "kjv", "--jobs", "2", "--docs", str(docs),
           "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=2400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = (docs / "benchmarks.md").read_text()
    for corpus in ("kjv",):
        summary = json.loads((out / corpus / "summary.json").read_text())
        assert summary["complete"] and summary["reference"] == "hybrid-spectrum"
        rows = {r["arm"]: r for r in summary["rows"]}
        assert {"uniform", "hybrid-spectrum", "hybrid-random", "qv-only", "kappatune", "eva", "hybrid-loftq"} <= set(rows)
        anchor = rows["uniform"]["trainable_parameters"]
        for row in rows.values():
            if row["solved"]:  # equal budgets: the plan's parameters within ±5 % of uniform's
                assert row["solved"]["target"] == anchor and abs(row["solved"]["parameters"] - anchor) <= 0.05 * anchor
            assert row["loss"] < row["start"] and row["step_time_s"] > 0 and row["lr"] in (3e-3, 1e-2)
        assert f"img/compare-{corpus}-quick.png" in table and "| hybrid-random |" in table
        assert (docs / "img" / f"compare-{corpus}-quick.png").stat().st_size > 10_000
