"""docs/figures.py redraws every concept figure from the bundled model (slow: SGM calibration)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from train_fixtures import ROOT, cli_env


@pytest.mark.slow
def test_concept_figures_are_drawn_from_the_bundled_model(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "figures.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, env=cli_env(), timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "layers.10.mlp.up_proj: mp score 0.07" in res.stdout and " groups, " in res.stdout
    for name in ("mp-edge", "selection", "tiers", "groups"):
        with Image.open(tmp_path / f"{name}.png") as image:
            assert min(image.size) > 200
    bad = subprocess.run([sys.executable, str(ROOT / "docs" / "figures.py"), "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown figure(s) nope" in bad.stderr
