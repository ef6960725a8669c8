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


def _wheels():
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        import wheels
    finally:
        sys.path.pop(0)
    return wheels


def test_slimmed_bitsandbytes_wheel_keeps_cpu_and_cuda13_libraries_and_a_matching_record(tmp_path):
    import zipfile

    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    libs = ["cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm64"]
    files = {"bitsandbytes/__init__.py": b"", **{f"bitsandbytes/libbitsandbytes_{lib}.so": b"x" * 100 for lib in libs}}
    record = "".join(f"{name},sha256=abc,{len(data)}\n" for name, data in files.items())
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("bitsandbytes-0.50.2.dist-info/RECORD", record + "bitsandbytes-0.50.2.dist-info/RECORD,,\n")
    _wheels().slim_bitsandbytes(wheel)
    with zipfile.ZipFile(wheel) as zf:
        kept = sorted(n for n in zf.namelist() if n.endswith(".so"))
        recorded = [ln.split(",")[0] for ln in zf.read("bitsandbytes-0.50.2.dist-info/RECORD").decode().splitlines()]
    assert kept == [f"bitsandbytes/libbitsandbytes_{lib}.so" for lib in ("cpu", "cuda130", "cuda132")]
    assert sorted(n for n in recorded if n.endswith(".so")) == kept and "bitsandbytes/__init__.py" in recorded


def test_source_digest_follows_the_sources_and_ignores_bytecode(tmp_path):
    wheels = _wheels()
    (tmp_path / "spectra_core" / "__pycache__").mkdir(parents=True)
    (tmp_path / "plugins" / "p").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "spectra_core" / "a.py").write_text("x = 1\n")
    (tmp_path / "plugins" / "p" / "b.py").write_text("y = 1\n")
    before = wheels.source_digest(tmp_path)
    (tmp_path / "spectra_core" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert wheels.source_digest(tmp_path) == before
    (tmp_path / "plugins" / "p" / "b.py").write_text("y = 2\n")
    assert wheels.source_digest(tmp_path) != before


def test_a_failing_phase_is_recorded_and_the_report_stays_valid_json(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        import check
    finally:
        sys.path.pop(0)
    report = check.Report(tmp_path / "r.json", {"phases": {}})

    def broken(entry, deadline):
        entry["partial"] = 1
        raise RuntimeError("kernel exploded")

    check.run_phase(report, "one", 5, broken)
    check.run_phase(report, "two", 5, lambda entry, deadline: entry.update(done=True))
    saved = json.loads((tmp_path / "r.json").read_text())["phases"]
    assert saved["one"]["status"] == "failed" and "kernel exploded" in saved["one"]["error"]
    assert saved["one"]["partial"] == 1 and "RuntimeError" in saved["one"]["traceback"]
    assert saved["two"] == {**saved["two"], "status": "ok", "done": True}
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_unknown_phase_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu/check.py", str(tmp_path / "x.json"), "--dry-run",
                           "--phases", "tests,bench"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "unknown phase(s) bench" in proc.stderr and not (tmp_path / "x.json").exists()


def test_sigterm_records_the_phase_it_cut_short(tmp_path):
    import signal
    import time

    out = tmp_path / "x.json"
    proc = subprocess.Popen([sys.executable, "benchmarks/gpu/check.py", str(out), "--dry-run", "--phases", "tests"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out.exists() and "tests" in json.loads(out.read_text())["phases"]):
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 124
    finally:
        proc.kill()
    report = json.loads(out.read_text())
    assert report["phases"]["tests"]["status"] == "terminated" and "SIGTERM" in report["terminated"]
