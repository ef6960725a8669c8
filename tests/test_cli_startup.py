"""The CLI answers `--help` and a config file's own errors without importing torch (seconds on every
call); the torch-bound public API still resolves on first use. Real subprocesses, `-X importtime`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_fixtures import ROOT, cli_env


def imported(*args: str, code: str | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime`` on the CLI with ``args`` (or on ``code``); the top-level packages it imported."""
    cmd = [sys.executable, "-X", "importtime", *(["-c", code] if code else ["-m", "spectra_core", *args])]
    res = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in res.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return res, names


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["compare", "--help"], ["scan", "--help"]])
def test_help_imports_no_torch(args):
    res, names = imported(*args)
    assert res.returncode == 0 and "Usage" in res.stdout
    assert "spectra_core" in names and not names & {"torch", "transformers", "peft"}


def test_a_config_files_own_errors_import_no_torch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [\n", encoding="utf-8")
    for args, named in ((["train", str(bad)], "not valid YAML"), (["plan", str(tmp_path / "none.yaml")], "not found"),
                        (["train", str(ROOT / "configs" / "demo.yaml"), "training.steps"], "training.steps")):
        res, names = imported(*args)
        assert res.returncode == 2 and named in res.stderr and "Traceback" not in res.stderr
        assert "torch" not in names, args


def test_the_torch_bound_api_resolves_on_first_use():
    res, names = imported(code="import sys, spectra_core; assert 'torch' not in sys.modules; "
                               "from spectra_core import AdapterHandle, peft_matches; "
                               "assert AdapterHandle.__module__ == 'spectra_core.adapters' and callable(peft_matches); "
                               "print([n for n in spectra_core.__all__ if not hasattr(spectra_core, n)])")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "torch" in names and res.stdout.strip() == "[]"


def test_the_startup_benchmark_runs(tmp_path):
    """benchmarks/cli_startup.py (the figures in docs/performance.md) runs and writes every command's times."""
    out = tmp_path / "startup.json"
    res = subprocess.run([sys.executable, "benchmarks/cli_startup.py", "--repeats", "1", "--json", str(out)],
                         env=cli_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert set(figures["median_s"]) == {"python -c pass", "import torch", "spectra --help", "spectra train BAD_YAML",
                                        "spectra config schema"}
    assert all(s > 0 for s in figures["median_s"].values()) and "x import torch" in res.stdout
