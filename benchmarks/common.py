"""Helpers shared by the benchmark scripts: paths, peak RSS, one arm per subprocess, a spectra run's
measurements from its metrics.

Scripts import it as ``from common import ...`` (``python benchmarks/x.py`` puts this folder on the path).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "kjv-genesis-exodus.txt"


def peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def arm_env(threads: int) -> dict[str, str]:
    """Environment of an arm's subprocess: ``threads`` torch threads, offline hub, quiet tokenizers."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def run_subprocess(script: str | Path, args: list[str], *, threads: int, log: Path | None = None) -> dict[str, Any]:
    """Run ``script --result FILE *args`` in a fresh interpreter and return the JSON it wrote to FILE.

    stdout/stderr go to ``log`` (or are discarded); a failing arm raises with the log's tail.
    """
    with tempfile.NamedTemporaryFile(suffix=".json") as fh:
        out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            proc = subprocess.run([sys.executable, str(script), "--result", fh.name, *args], env=arm_env(threads),
                                  stdout=out, stderr=subprocess.STDOUT)
        finally:
            if log:
                out.close()
        if proc.returncode:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"{script} {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(Path(fh.name).read_text())


def run_measurements(run_dir: Path) -> dict[str, Any]:
    """Held-out loss at the start, after training and (if a rebalancer ran) after rebalancing, and the
    median time per optimizer step (the first step, which warms up, left out), from ``metrics.jsonl``."""
    from spectra_core.training.metrics import read_metrics

    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    evals = [r for r in records if "eval_loss" in r]
    steps = [r["step_time_s"] for r in records if "step_time_s" in r]
    return {
        "eval_loss_start": evals[0]["eval_loss"],
        "eval_loss_end": next(r["eval_loss"] for r in reversed(evals) if "after" not in r),
        "eval_loss_after_rebalance": next((r["eval_loss"] for r in evals if r.get("after") == "rebalance"), None),
        "step_time_s": statistics.median(steps[1:] or steps),
    }
