"""Quantizers: bnb-nf4 (with the CPU repack guard), torchao-nf4, bytes per parameter."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_plan, tiny_model_dir  # noqa: F401

from spectra_core.builtins.quantizers import (
    BnbNF4Quantizer,
    NoQuantizer,
    TorchaoNF4Quantizer,
    base_bytes_per_param,
)
from spectra_core.adapters import base_weight, lora_layers
from spectra_core.training.modeling import build_peft_model
from spectra_core.training.session import Session

NAME = "model.layers.1.self_attn.k_proj"  # 32 out features: the shape the repack trap crashes on


def _batch(n: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(3, 300, (n, length), generator=torch.Generator().manual_seed(0))


def _original(model_dir, name: str) -> torch.Tensor:
    return load_file(model_dir / "model.safetensors")[name + ".weight"].float()


def _eval_then_train_grads(model) -> dict[str, torch.Tensor]:
    """Gradients of a training step that follows an eval-mode no-grad forward (LoRA B made nonzero)."""
    ids = _batch()
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(std=0.01, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_bnb_nf4_lora_gradients_flow_after_eval_pass(tiny_model_dir):
    base = BnbNF4Quantizer().load(tiny_model_dir)
    layers = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and all(not m.support_avx512bf16_for_cpu for m in layers)
    model = build_peft_model(base, make_plan(tiny_model_dir))
    grads = _eval_then_train_grads(model)
    assert len(grads) == 28
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads.values())
    # the 4-bit weight still dequantizes to the original after the eval pass
    w = base_weight(lora_layers(model)[NAME])
    orig = _original(tiny_model_dir, NAME)
    assert w.shape == orig.shape
    assert float((w - orig).norm() / orig.norm()) < 0.15


def test_bnb_effective_weight_matches_forward(tiny_model_dir):
    model = build_peft_model(BnbNF4Quantizer({"compute_dtype": "float32"}).load(tiny_model_dir), make_plan(tiny_model_dir))
    layer = lora_layers(model)[NAME]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        x = torch.randn(5, layer.in_features)
        (_, w), = Session(model, make_plan(tiny_model_dir)).effective_weights([NAME])
        torch.testing.assert_close(layer(x), x @ w.T, rtol=2e-3, atol=2e-3)


def test_torchao_nf4_lora_trains(tiny_model_dir):
    from torchao.quantization import NF4Tensor

    base = TorchaoNF4Quantizer().load(tiny_model_dir)
    assert isinstance(dict(base.named_modules())[NAME].weight, NF4Tensor)
    assert not isinstance(base.lm_head.weight, NF4Tensor)
    model = build_peft_model(base, make_plan(tiny_model_dir))
    grads = _eval_then_train_grads(model)
    assert len(grads) == 28 and all(g is not None and float(g.abs().sum()) > 0 for g in grads.values())
    w = base_weight(lora_layers(model)[NAME])
    orig = _original(tiny_model_dir, NAME)
    assert float((w - orig).norm() / orig.norm()) < 0.15


@pytest.mark.parametrize(("quantizer", "expected"), [
    (NoQuantizer(), 4.0), (NoQuantizer({"dtype": "bfloat16"}), 2.0),
    (BnbNF4Quantizer(), 0.5 + (1 + 4 / 256) / 64), (BnbNF4Quantizer({"double_quant": False}), 0.5 + 4 / 64),
    (TorchaoNF4Quantizer(), 0.5 + (1 + 4 / 256) / 64),
])
def test_base_bytes_per_param(quantizer, expected):
    assert base_bytes_per_param(quantizer) == pytest.approx(expected)
