"""Baseline arms on a tiny random Llama with real peft: peft-targets (uniform, q/v, last layers), KappaTune,
hybrid's depth budget. The LoRA inits (EVA, LoftQ) are in test_lora_init.py."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from train_fixtures import tiny_model_dir  # noqa: F401

from spectra_core.config import TargetsConfig
from spectra_core.errors import ConfigError, InputError
from spectra_core.models import find_targets
from spectra_core.registry import get_registry
from spectra_core.spectral.sources import safetensors_source
from spectra_core.spectral.types import layer_index
from spectra_core.adapters import lora_config_kwargs, lora_layers


@pytest.fixture(scope="module")
def targets(tiny_model_dir):
    return find_targets(tiny_model_dir, TargetsConfig())


def _allocate(name, options, scores, targets):
    return get_registry().create("allocator", name, options).allocate(scores, targets)


@pytest.fixture(scope="module")
def scores(tiny_model_dir, targets):
    names = [t.name for t in targets]
    return get_registry().create("scorer", "random").score(safetensors_source(tiny_model_dir, names))


def test_uniform_adapts_every_target_at_one_rank(targets, scores):
    plan = _allocate("peft-targets", {"rank": 3}, scores, targets)
    assert all(m.active and m.rank == 3 and m.alpha == 6 for m in plan.modules.values())
    assert plan.trainable_parameters() == sum(3 * (t.in_features + t.out_features) for t in targets)


def test_q_v_is_peft_default_for_llama_and_matches_peft_injection(tiny_model_dir, targets, scores):
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS
    from transformers import AutoModelForCausalLM

    plan = _allocate("peft-targets", {"target_modules": DEFAULTS["llama"], "rank": 2}, scores, targets)
    assert DEFAULTS["llama"] == ["q_proj", "v_proj"]
    active = {m.name for m in plan.active()}
    assert active and all(n.endswith(("q_proj", "v_proj")) for n in active)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2))
    assert set(lora_layers(peft_model)) == active  # peft's own default targets, same modules


def test_last_layers_is_peft_layers_to_transform(tiny_model_dir, targets, scores):
    from transformers import AutoModelForCausalLM

    plan = _allocate("peft-targets", {"last_layers": 1, "rank": 2}, scores, targets)
    active = {m.name for m in plan.active()}
    assert {layer_index(n) for n in active} == {1} and len(active) == 7
    types = sorted({t.type for t in targets})
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=2, target_modules=types, layers_to_transform=[1]))
    assert set(lora_layers(peft_model)) == active
    assert lora_config_kwargs(plan)["target_modules"] == sorted(active, key=list(plan.modules).index)


def test_peft_targets_refuses_bad_layer_and_module_choices(targets, scores):
    with pytest.raises(ConfigError, match="last_layers=3 exceeds the model's 2 layers"):
        _allocate("peft-targets", {"last_layers": 3}, scores, targets)
    with pytest.raises(InputError, match="matches none") as err:
        _allocate("peft-targets", {"target_modules": ["query"]}, scores, targets)
    assert "q_proj" in err.value.hint
    with pytest.raises(ConfigError, match="rank=65 exceeds"):
        _allocate("peft-targets", {"rank": 65}, scores, targets)
    with pytest.raises(ValueError, match="either last_layers or layers_to_transform"):
        get_registry().create("allocator", "peft-targets", {"last_layers": 1, "layers_to_transform": [0]})


def test_kappatune_order_is_peft_kappatune_order(tiny_model_dir, targets):
    from peft.helpers import KappaTuneSelector
    from transformers import AutoModelForCausalLM

    names = [t.name for t in targets]
    scores = get_registry().create("scorer", "kappatune").score(safetensors_source(tiny_model_dir, names))
    ours = [m.name for m in sorted(scores.modules, key=lambda m: -m.score)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    theirs = [n for n in KappaTuneSelector(model, show_progress=False).get_best_targets() if n in set(names)]
    assert ours == theirs
    plan = _allocate("peft-targets", {"top_fraction": 0.25, "rank": 2}, scores, targets)
    assert [m.name for m in plan.active()] == sorted(theirs[:int(len(names) * 0.25)], key=names.index)


def test_depth_budget_trains_the_same_count_only_in_the_top_layers(targets, scores):
    plain = _allocate("spectrum-top", {"top_fraction": 0.5, "rank": 2}, scores, targets)
    deep = _allocate("spectrum-top", {"top_fraction": 0.5, "rank": 2, "backward_layers": 1}, scores, targets)
    assert {layer_index(m.name) for m in deep.active()} == {1}
    assert deep.trainable_parameters() == plain.trainable_parameters()
    assert {layer_index(m.name) for m in plain.active()} == {0, 1}  # the random pick spans both layers
    with pytest.raises(ConfigError, match="only 1 are in the eligible layers"):
        _allocate("spectrum-top", {"top_fraction": 1.0, "rank": 2, "backward_layers": 1}, scores, targets)
    with pytest.raises(ConfigError, match="backward_layers=3 exceeds"):
        _allocate("spectrum-top", {"backward_layers": 3}, scores, targets)


def test_depth_budget_stops_backward_below_the_cut(tiny_model_dir, targets, scores):
    """No gradient reaches layer 0 when only layer 1 trains (all-inactive: layer 0 carries a frozen LoRA)."""
    from transformers import AutoModelForCausalLM

    from spectra_core.training.modeling import build_peft_model

    plan = _allocate("spectrum-top", {"top_fraction": 0.5, "rank": 2, "backward_layers": 1, "mode": "all-inactive"},
                     scores, targets)
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), plan)
    seen = []
    for i, layer in enumerate(model.get_base_model().model.layers):
        layer.register_full_backward_hook(lambda *a, i=i: seen.append(i))
    ids = torch.randint(0, 100, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert seen == [1]
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
