"""`benchmarks/gpu/check.py --dry-run`: the GPU check end to end on the CPU with tiny sizes, so the
script a lent GPU machine runs cannot rot between loans (slow: ~1 min on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_exercises_every_phase(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu/check.py", str(out), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    phases = report["phases"]
    assert report["dry_run"] and list(phases) == ["env", "tests", "train", "scan"]
    assert all(p["status"] == "ok" for p in phases.values())
    tests = phases["tests"]["tests"]
    assert len(tests) >= 9 and all(t["outcome"] == "SKIPPED" for t in tests.values())  # collected, no CUDA here
    arms = phases["train"]["arms"]
    assert {(a["arm"], a["gradient_checkpointing"]) for a in arms} >= {
        ("qlora-all", False), ("hybrid-25", False), ("qlora-all", True), ("hybrid-25", True)}
    assert all(a["status"] == "ok" and a["step_time_s"] > 0 and a["tokens_per_s"] > 0 for a in arms)
    hybrid, qlora = (next(a for a in arms if a["arm"] == n) for n in ("hybrid-25", "qlora-all"))
    assert hybrid["trainable_params"] < qlora["trainable_params"]
    assert set(phases["train"]["ratios"]) >= {"hybrid-25/qlora-all", "hybrid-25/qlora-all +gc"}
    cmp_ = phases["scan"]["comparison"]
    assert cmp_["modules_compared"] == phases["scan"]["full"]["modules"] == phases["scan"]["checkpoint"]["tensors"]
    assert cmp_["same_top25_selection"] and cmp_["max_rel_score_diff"] <= 1e-4
    assert "DRY RUN" in proc.stdout and "scan: ours" in proc.stdout


def test_check_refuses_to_run_without_a_gpu_unless_dry(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu/check.py", str(tmp_path / "x.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if "no CUDA GPU visible" not in proc.stderr:
        pytest.skip("a CUDA GPU is visible")
    assert proc.returncode == 2 and "--dry-run" in proc.stderr and not (tmp_path / "x.json").exists()
