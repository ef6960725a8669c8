"""merged: stock transformers loads the export; logits match the adapter on the float base."""

from __future__ import annotations

import json

import bitsandbytes as bnb
import pytest
import torch
from export_fixtures import config_data, logits, make_run, scores_of
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from spectra_core.config import load_config
from spectra_core.errors import InputError
from spectra_core.export.merged import MergedExporter
from spectra_core.run import Run

# max |Δlogit| / max |logit| against the adapter on the float32 base (MergedExporter's docstring)
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("merged"))


@pytest.fixture(scope="module")
def reference(fixture):
    """Logits of the exported adapter on the float32 base."""
    base = AutoModelForCausalLM.from_pretrained(fixture.base_dir, dtype=torch.float32)
    return logits(PeftModel.from_pretrained(base, fixture.run_dir / "final").eval(), fixture.base_dir)


def _run(fx) -> Run:
    config = load_config(data=config_data(fx.base_dir, fx.run_dir), registry=fx.registry)
    return Run(fx.run_dir, config, fx.plan, scores_of(fx.plan), registry=fx.registry)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_stock_transformers_loads_merged_within_tolerance(fixture, reference, tmp_path, dtype):
    out = MergedExporter({"dtype": dtype}).export(_run(fixture), tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.dtype == getattr(torch, dtype) and not hasattr(model, "peft_config")
    got = logits(model, out).float()  # the tokenizer saved with the model
    error = (got - reference).abs().max() / reference.abs().max()
    assert error <= TOLERANCE[dtype], f"{dtype}: relative error {error:.2e}"


def _four_bit_adapter_logits(fx):
    q = AutoModelForCausalLM.from_pretrained(
        fx.base_dir, device_map="cpu", quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32))
    for module in q.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False  # the CPU in-place repack trap (ENVIRONMENT.md)
    return logits(PeftModel.from_pretrained(q, fx.run_dir / "final").eval(), fx.base_dir)


def test_merged_into_the_dequantized_base_reproduces_the_4bit_adapter_model(fixture, reference, tmp_path):
    """Default base: quantized — the merge reproduces what training saw; base: original does not."""
    data = config_data(fixture.base_dir, fixture.run_dir)
    data["quantizer"] = {"name": "bnb-nf4", "options": {"compute_dtype": "float32"}}
    run = Run(fixture.run_dir, load_config(data=data, registry=fixture.registry), fixture.plan,
              scores_of(fixture.plan), registry=fixture.registry)
    four_bit = _four_bit_adapter_logits(fixture)
    merged = AutoModelForCausalLM.from_pretrained(MergedExporter().export(run, tmp_path / "m")).eval()
    got = logits(merged, fixture.base_dir)
    assert (got - four_bit).abs().max() / four_bit.abs().max() <= TOLERANCE["float32"]
    original = AutoModelForCausalLM.from_pretrained(
        MergedExporter({"base": "original"}).export(run, tmp_path / "o")).eval()
    gap = ((logits(original, fixture.base_dir) - four_bit).norm() / four_bit.norm()).item()
    assert gap > 1e-3, gap  # the base's quantization error, which the default route avoids


def test_missing_tokenizer_fails_before_writing(tmp_path):
    fx = make_run(tmp_path / "notok", tokenizer=False)
    with pytest.raises(InputError, match="tokenizer"):
        MergedExporter().export(_run(fx), tmp_path / "out" / "merged")
    assert not (tmp_path / "out").exists()
