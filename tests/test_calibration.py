"""Core calibration (tiny random Llama, real peft): the probe session computes the base function, its
batches follow the seed, and the sketch norm estimates the dense gradient norm."""

from __future__ import annotations

import pytest
import torch

from spectra_core.adapters import lora_layers
from spectra_core.config import load_config
from spectra_core.registry import get_registry
from spectra_core.training.loss import causal_lm_loss
from spectra_core.training.session import calibration_session
from train_fixtures import config_dict, make_tiny_model, write_text


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    model_dir = make_tiny_model(root / "model", layers=2)
    data = write_text(root / "text.txt", n=200)
    return model_dir, data, root


def session_for(setup, seed: int = 0):
    model_dir, data, root = setup
    config = load_config(data=config_dict(model_dir, data, root / "run", seed=seed))
    quantizer = get_registry().create("quantizer", "none")
    from spectra_core.models import find_targets

    return calibration_session(config, quantizer, model_dir, find_targets(model_dir, config.targets))


def test_probe_lora_keeps_the_base_function_on_every_target(setup):
    from transformers import AutoModelForCausalLM

    s = session_for(setup)
    assert set(lora_layers(s.model)) == set(s.plan.modules) and len(s.plan.modules) == 2 * 7
    batch = next(iter(s.calibration_batches(1)))
    base = AutoModelForCausalLM.from_pretrained(setup[0], dtype=torch.float32)
    with torch.no_grad():
        expected = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = s.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(got, expected)


def test_batches_depend_on_the_seed_only(setup):
    a = [b["input_ids"] for b in session_for(setup, seed=0).calibration_batches(3)]
    again = [b["input_ids"] for b in session_for(setup, seed=0).calibration_batches(3)]
    other = [b["input_ids"] for b in session_for(setup, seed=1).calibration_batches(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, again))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, other))
    assert all(x.shape[0] == 2 for x in a)  # training.batch_size of the fixture config


def test_sketch_norm_estimates_the_dense_gradient_norm(setup):
    s = session_for(setup)
    names = list(s.plan.modules)
    lora = lora_layers(s.model)
    for n in names:
        lora[n].get_base_layer().weight.requires_grad_(True)
    for batch in s.calibration_batches(2):
        loss, count = causal_lm_loss(s.model, batch)
        (loss / count).backward()
    dense = {n: lora[n].get_base_layer().weight.grad.norm().item() for n in names}
    for n in names:
        lora[n].get_base_layer().weight.requires_grad_(False)
        lora[n].get_base_layer().weight.grad = None
    signals = s.gradient_signals(names, batches=2, dim=2048, seed=0)
    ratios = torch.tensor([signals[n].norm().item() / dense[n] for n in names])
    assert all(v > 0 for v in dense.values())
    assert (ratios - 1).abs().max() < 0.1, ratios  # relative error of the squared norm ≲ √(2/2048) ≈ 3 %
    assert abs(ratios.mean() - 1) < 0.03
