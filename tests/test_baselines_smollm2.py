"""Baselines where the scores matter: the bundled SmolLM2-135M (real weights). Slow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spectra_core.config import ModelConfig, TargetsConfig
from spectra_core.models import find_targets, resolve_model_dir
from spectra_core.pipeline import Pipeline
from spectra_core.registry import get_registry
from spectra_core.spectral.sources import safetensors_source

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ARMS = REPO / "configs" / "compare" / "arms"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_model_dir(ModelConfig(source="bundled:smollm2-135m"))


def test_kappatune_ranks_smollm2_as_peft_does(model_dir):
    from peft.helpers import KappaTuneSelector
    from transformers import AutoModelForCausalLM

    names = [t.name for t in find_targets(model_dir, TargetsConfig())]
    scores = get_registry().create("scorer", "kappatune").score(safetensors_source(model_dir, names))
    ours = [m.name for m in sorted(scores.modules, key=lambda m: -m.score)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    wanted = set(names)
    theirs = [n for n in KappaTuneSelector(model, show_progress=False).get_best_targets() if n in wanted]
    assert ours == theirs and len(ours) == 210


def test_loftq_lowers_the_nf4_starting_loss_on_kjv(model_dir, tmp_path):
    """Step-0 held-out loss: float < NF4 + LoftQ corrections < NF4 (benchmarks/loftq.py measures it in full)."""
    import yaml

    def start_loss(overlay: dict) -> float:
        cfg = {"model": {"source": "bundled:smollm2-135m"}, **overlay,
               "data": {"path": str(REPO / "data" / "kjv-genesis-exodus.txt"), "max_length": 64},
               "training": {"max_steps": 1, "batch_size": 4, "eval_batches": 4, "warmup_steps": 0, "seed": 0},
               "output_dir": str(tmp_path / str(len(list(tmp_path.iterdir()))))}
        run = Pipeline.from_dict(cfg).train()
        from spectra_core.training.metrics import read_metrics

        return next(r["eval_loss"] for r in read_metrics(run.run_dir / "metrics.jsonl") if "eval_loss" in r)

    loftq_arm = yaml.safe_load((ARMS / "hybrid-loftq.yaml").read_text())
    plain_arm = yaml.safe_load((ARMS / "hybrid-spectrum-25.yaml").read_text())
    loftq = start_loss({**loftq_arm, "exporters": []})
    nf4 = start_loss(plain_arm)
    full = start_loss({**plain_arm, "quantizer": {"name": "none"}})
    assert full < loftq < nf4, (full, loftq, nf4)
