"""The scan split across two torchrun processes gives the single-process result, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys

pytest_plugins = ["scan_fixtures"]


def test_torchrun_two_processes_match_single_process(run_cli, small_real_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPECTRA_SCAN_CACHE": str(tmp_path / "cache")}
    args = ["scan", str(small_real_dir), "--no-cache", "--top-percent", "50"]
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "spectra_core", *args, "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert dist.returncode == 0, dist.stderr
    assert "2 process(es)" in dist.stderr
    single = run_cli(*args, "--quiet", "--out", tmp_path / "one", env={"SPECTRA_SCAN_CACHE": str(tmp_path / "cache")})
    assert single.returncode == 0, single.stderr
    for name in ("scores.json", "snr_results.json", "unfrozen_parameters_50percent.yaml", "selection.json"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text(), name
