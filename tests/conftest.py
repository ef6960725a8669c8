"""Shared test set-up: one torch thread per test process (2-core CI box, two pytest-xdist workers), offline hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SPECTRUM_REFERENCE = REPO.parent / "shared" / "spectrum-reference"


@pytest.fixture(scope="session")
def run_cli():
    """Run ``python -m spectra_core ARGS`` as a real subprocess; returns CompletedProcess."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 600,
            input_text: str | None = None):
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        return subprocess.run([sys.executable, "-m", "spectra_core", *map(str, args)], capture_output=True,
                              text=True, env=full_env, cwd=cwd, timeout=timeout, input=input_text,
                              stdin=None if input_text is not None else subprocess.DEVNULL)

    return run


@pytest.fixture(scope="session")
def spectrum_reference() -> Path:
    if not SPECTRUM_REFERENCE.is_dir():
        pytest.skip("../shared/spectrum-reference is not present")
    return SPECTRUM_REFERENCE
