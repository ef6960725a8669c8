"""The CUDA path (``pytest -m cuda``; every test skips cleanly without a CUDA GPU).

bitsandbytes NF4 kernels, bf16 compute, LoRA forward/backward, the three methods end to end,
adapter vs merged logits, bitwise resume and the GPU scan, on a tiny random Llama.
``benchmarks/gpu/check.py`` runs these on a lent GPU machine and records the outcome.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import config_dict, make_plan, make_tiny_model, write_text

from spectra_core.pipeline import Pipeline
from spectra_core.training.metrics import read_metrics

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("cuda") / "model", layers=4, hidden=128)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_text(tmp_path_factory.mktemp("cuda-data") / "d.txt", 200)


def _nf4_config(model_dir: Path, data: Path, out: Path, compute: str = "auto", **training) -> dict:
    cfg = config_dict(model_dir, data, out, **training)
    cfg["quantizer"] = {"name": "bnb-nf4", "options": {"compute_dtype": compute}}
    return cfg


def _batch(model_dir: Path, device: str = "cuda") -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok(["the cat sees the dog.", "a king went over the river and spoke."], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device),
            "labels": labels.to(device)}


def test_nf4_double_quant_kernels_on_cuda_match_the_cpu_codes():
    import bitsandbytes.functional as bf

    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    packed, state = bf.quantize_4bit(w.cuda(), quant_type="nf4", compress_statistics=True)
    back = bf.dequantize_4bit(packed, state).float().cpu()
    error = ((back - w.float()).norm() / w.float().norm()).item()
    assert error < 0.12, f"NF4 round trip relative error {error:.3f}"
    packed_cpu, state_cpu = bf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    on_cpu = bf.dequantize_4bit(packed_cpu, state_cpu).float()
    assert ((back - on_cpu).norm() / on_cpu.norm()).item() < 1e-2


def test_bnb_base_loads_on_this_gpu_with_bf16_compute(model_dir):
    import bitsandbytes as bnb

    from spectra_core.builtins.quantizers import device_map, resolve_compute_dtype

    assert resolve_compute_dtype("auto") == "bfloat16"
    assert device_map() == {"": 0}
    pipe = Pipeline.from_dict(_nf4_config(model_dir, model_dir, model_dir / "unused"))
    model = pipe.quantizer.load(model_dir)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.compute_dtype == torch.bfloat16 for m in layers)
    assert all(m.weight.device.type == "cuda" and m.weight.quant_state is not None for m in layers)
    batch = _batch(model_dir)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.device.type == "cuda" and bool(torch.isfinite(logits).all())


def test_lora_forward_backward_on_cuda(model_dir):
    from spectra_core.training.loss import causal_lm_loss
    from spectra_core.adapters import lora_layers, lora_parameters
    from spectra_core.training.modeling import build_peft_model, load_base

    pipe = Pipeline.from_dict(_nf4_config(model_dir, model_dir, model_dir / "unused"))
    plan = make_plan(model_dir, mode="all-inactive", active="attn")
    model = build_peft_model(load_base(pipe.config, pipe.quantizer, model_dir, gradient_checkpointing=True), plan)
    model.train()
    loss, n = causal_lm_loss(model, _batch(model_dir))
    assert loss.device.type == "cuda" and n > 0
    (loss / n).backward()
    for name, layer in lora_layers(model).items():
        for p in lora_parameters(layer):
            assert p.device.type == "cuda"
            if plan.modules[name].active:
                assert p.grad is not None and bool(torch.isfinite(p.grad).all())
            else:
                assert p.grad is None
    b_grads = [layer.lora_B["default"].weight.grad for name, layer in lora_layers(model).items()
               if plan.modules[name].active]
    assert b_grads and all(float(g.abs().sum()) > 0 for g in b_grads)  # B starts at zero: its gradient is not


def test_torchao_nf4_base_is_converted_on_the_gpu_and_trains(model_dir):
    pytest.importorskip("torchao", reason="torchao (optional extra) is not installed")
    from torchao.quantization import NF4Tensor

    from spectra_core.builtins.quantizers import TorchaoNF4Quantizer
    from spectra_core.training.loss import causal_lm_loss
    from spectra_core.training.modeling import build_peft_model, lora_modules

    base = TorchaoNF4Quantizer().load(model_dir)
    weights = [m.weight for m in base.modules() if isinstance(getattr(m, "weight", None), NF4Tensor)]
    assert weights and all(w.device.type == "cuda" for w in weights)
    model = build_peft_model(base, make_plan(model_dir))
    loss, n = causal_lm_loss(model, _batch(model_dir))
    (loss / n).backward()
    grads = [layer.lora_B["default"].weight.grad for layer in lora_modules(model).values()]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("method", ["hybrid", "alors", "sgm"])
def test_each_method_trains_two_steps_on_cuda_and_exports(method, model_dir, data_file, tmp_path):
    cfg = {"method": method, "model": {"source": str(model_dir)},
           "data": {"path": str(data_file), "max_length": 32, "validation_fraction": 0.1},
           "training": {"max_steps": 2, "batch_size": 2, "warmup_steps": 1, "eval_every": 2, "save_every": 2,
                        "log_every": 1, "learning_rate": 1e-3},
           "output_dir": str(tmp_path / "run")}
    pipe = Pipeline.from_dict(cfg)
    run = pipe.train()
    exports = pipe.export(run)
    steps = [r for r in read_metrics(run.run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["loss"] == r["loss"] and r["grad_norm"] > 0 for r in steps)
    assert next(run.model.parameters()).device.type == "cuda"
    assert (run.run_dir / "final" / "adapter_model.safetensors").is_file()
    assert (exports["merged"] / "model.safetensors").is_file()


def test_adapter_logits_match_the_merged_export_on_cuda(model_dir, data_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from spectra_core.export.merged import MergedExporter
    from spectra_core.training.modeling import load_trained_model

    cfg = _nf4_config(model_dir, data_file, tmp_path / "run", compute="float32", max_steps=3, learning_rate=1e-2)
    run = Pipeline.from_dict(cfg).train(make_plan(model_dir))
    batch = _batch(model_dir)
    with torch.no_grad():
        adapter = load_trained_model(run)(input_ids=batch["input_ids"],
                                          attention_mask=batch["attention_mask"]).logits.float().cpu()
        merged = AutoModelForCausalLM.from_pretrained(MergedExporter().export(run, tmp_path / "merged")).eval()
        cpu = _batch(model_dir, "cpu")
        got = merged(input_ids=cpu["input_ids"], attention_mask=cpu["attention_mask"]).logits
    error = ((got - adapter).abs().max() / adapter.abs().max()).item()
    assert error < 1e-4, f"merged export vs 4-bit adapter model on CUDA: relative error {error:.2e}"


def test_resume_on_cuda_is_bitwise_identical(model_dir, data_file, tmp_path):
    plan = make_plan(model_dir, mode="all-inactive", active="attn", lr_scale=0.5)
    kw = {"max_steps": 4, "save_every": 2, "keep_checkpoints": 3, "gradient_accumulation": 2}

    def pipe(out: Path) -> Pipeline:
        return Pipeline.from_dict(_nf4_config(model_dir, data_file, out, **kw))

    pipe(tmp_path / "a").train(plan.model_copy(deep=True))
    pipe(tmp_path / "b").train(plan.model_copy(deep=True))
    shutil.rmtree(tmp_path / "b" / "final")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000004")
    pipe(tmp_path / "b").train(resume=True)
    a = load_file(tmp_path / "a" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "adapter_model.safetensors")
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert a.keys() == b.keys() and worst == 0.0, f"resumed run differs: max |Δ| {worst:.3e}"


def test_gpu_scan_matches_the_cpu_scan(model_dir):
    from transformers import AutoModelForCausalLM

    from spectra_core.spectral.scan import run_scan

    cpu = run_scan(model_dir, "spectrum", use_cache=False, device="cpu").scores
    gpu = run_scan(model_dir, "spectrum", use_cache=False, device="cuda").scores
    resident = run_scan(AutoModelForCausalLM.from_pretrained(model_dir).cuda(), "spectrum", use_cache=False).scores
    expected = {m.name: m.score for m in cpu.modules}
    for other in (gpu, resident):
        got = {m.name: m.score for m in other.modules}
        assert got.keys() == expected.keys()
        for name, score in expected.items():
            assert math.isclose(got[name], score, rel_tol=1e-6), (name, score, got[name])
