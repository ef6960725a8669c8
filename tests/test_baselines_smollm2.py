"""Baselines where the scores matter: the bundled SmolLM2-135M (real weights). Slow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spectra_core.config import ModelConfig, TargetsConfig
from spectra_core.models import find_targets, resolve_model_dir
from spectra_core.registry import get_registry
from spectra_core.spectral.sources import safetensors_source

pytestmark = pytest.mark.slow


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


def test_loftq_corrects_every_smollm2_module_toward_its_original_weight(model_dir):
    """Every injected LoRA holds its module's optimal rank-16 correction (the weight error shrinks in
    each of the 210 modules); whether that lowers the loss is measured by benchmarks/loftq.py."""
    from spectra_core.plan import AdapterPlan, LoraInit, ModulePlan
    from spectra_core.quantized import dense_weight
    from spectra_core.adapters import lora_layers
    from spectra_core.training.modeling import build_peft_model

    targets = find_targets(model_dir, TargetsConfig())
    plan = AdapterPlan(allocator="test", mode="all-inactive", init=LoraInit(name="loftq"), modules={
        t.name: ModulePlan(name=t.name, type=t.type, shape=(t.out_features, t.in_features), active=False,
                           rank=16, alpha=16) for t in targets})
    model = build_peft_model(get_registry().create("quantizer", "bnb-nf4").load(model_dir), plan, model_dir=model_dir)
    layers = lora_layers(model)
    before = after = 0.0
    for name, original in safetensors_source(model_dir, names=list(layers)):
        residual = original.float() - dense_weight(layers[name].get_base_layer())
        left = residual - layers[name].get_delta_weight("default").detach().float()
        assert left.norm() < residual.norm(), name
        before, after = before + float(residual.norm() ** 2), after + float(left.norm() ** 2)
    assert len(layers) == 210 and after / before < 0.9  # measured 0.878
