"""`spectra export RUN_DIR`: a real subprocess on a run directory; bad input exits non-zero, writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from export_fixtures import make_run, plugin_path

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("cli"))


def spectra(*args: str, plugins: Path) -> subprocess.CompletedProcess:
    """Run ``python -m spectra_core`` with the fixture allocator plugin installed via PYTHONPATH."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(plugins), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "spectra_core", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_export_runs_the_configured_exporters(fixture, tmp_path):
    result = spectra("export", str(fixture.run_dir), plugins=plugin_path(tmp_path / "plugin"))
    assert result.returncode == 0, result.stderr
    exports = fixture.run_dir / "exports"
    assert sorted(p.name for p in exports.iterdir()) == ["adapter", "report"]
    assert (exports / "adapter" / "adapter_model.safetensors").is_file()
    assert (exports / "report" / "report.md").is_file()
    assert "peft-adapter: wrote" in result.stdout and "report: wrote" in result.stdout


def test_not_a_run_exits_nonzero_and_writes_nothing(tmp_path):
    not_a_run = tmp_path / "somewhere"
    not_a_run.mkdir()
    (not_a_run / "notes.txt").write_text("hello")
    result = spectra("export", str(not_a_run), plugins=plugin_path(tmp_path / "plugin"))
    assert result.returncode == 2
    assert "is not a finished spectra run (missing config.yaml)" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in not_a_run.iterdir()) == ["notes.txt"]


def test_unknown_exporter_is_refused_before_any_export(fixture, tmp_path):
    before = sorted(p.name for p in fixture.run_dir.rglob("*"))
    result = spectra("export", str(fixture.run_dir), "--only", "peft-adapter", "--only", "nope",
                     plugins=plugin_path(tmp_path / "plugin"))
    assert result.returncode == 2
    assert "unknown exporter 'nope'" in result.stderr and "peft-adapter" in result.stderr
    assert sorted(p.name for p in fixture.run_dir.rglob("*")) == before
