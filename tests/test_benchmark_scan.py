"""benchmarks/scan.py's honesty rules: which processes count as load, when the docs table is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import machine_load  # noqa: E402


def test_other_running_leaves_out_the_benchmarks_own_process_tree():
    table = {10: ("R", 1), 11: ("R", 10), 12: ("S", 10), 13: ("R", 11), 20: ("R", 1), 21: ("R", 20), 22: ("S", 1)}
    assert machine_load.other_running(10, table) == 2  # 20 and 21; 10, 11, 13 are ours, 12/22 sleep
    assert machine_load.other_running(99, table) == 5


def test_a_busy_child_of_another_process_counts_and_our_own_does_not():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(50):  # wait until it is runnable in /proc
            table = machine_load.process_table()
            if table.get(busy.pid, ("S",))[0] == "R":
                break
        assert machine_load.other_running(os.getpid(), table) < machine_load.other_running(-1, table)
    finally:
        busy.kill()
        busy.wait()


def test_monitor_reports_load_and_the_idle_rule():
    with machine_load.LoadMonitor(interval=0.05, settle_s=0) as monitor:
        sum(range(10**6))
    report = monitor.report()
    assert len(report["loadavg_before"]) == 3 and report["samples"] >= 1
    assert report["idle"] == (report["loadavg_before"][0] <= machine_load.IDLE_LOAD
                              and report["other_running_mean"] <= machine_load.IDLE_OTHERS)
    assert ("idle" if report["idle"] else "BUSY") in monitor.label()


@pytest.mark.parametrize("idle", [True, False])
def test_docs_table_states_the_load(idle):
    import scan

    load = {"idle": idle, "label": "BUSY: load average 7.00", "loadavg_before": (0.1 if idle else 7.0, 0, 0),
            "loadavg_after": (2.0, 0, 0), "other_running_mean": 0.0 if idle else 5.0}
    runs = {"min": 1.0, "max": 1.2, "median": 1.1, "runs": [1.0, 1.2]}
    agreement = {"max_rel_score_diff": 1e-6, "top25_overlap": 1.0,
                 **{f"top{p}_identical": True for p in (10, 25, 50)}}
    report = {"date": "today", "threads": 2, "load": load, "smollm2_135m": {
        "ours_s": runs, "reference_s": {**runs, "min": 2.0, "max": 2.4}, "speedup": {**runs, "min": 1.9, "max": 2.0},
        "ours_rss_mb": 500, "reference_rss_mb": 900, "vs_reference": agreement,
        "approx": {"wall_s": 3.0, "speedup_vs_exact": 0.4, "vs_exact": agreement}}}
    table = scan.docs_table(report)
    assert ("idle machine" in table) == idle and ("not an idle figure" in table) != idle
    assert "1.90–2.00×" in table and "load average 0.10" in table if idle else "load average 7.00" in table
