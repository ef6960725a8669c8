"""Data- and quantization-aware LoRA initialisation (the plan's ``init``), through peft's own methods.

* EVA: ``LoraConfig(init_lora_weights="eva", eva_config=EvaConfig(...))`` then
  ``peft.initialize_lora_eva_weights`` on the run's first training batches; the ranks EVA
  redistributes are written back into the plan (with history).
* LoftQ: ``peft.replace_lora_weights_loftq`` with the original safetensors. peft 0.21 computes it on
  ``cuda``/``xpu`` only (the device is hard-coded), so on a CPU base the same single LoftQ step runs
  on the CPU: the rank-r truncated SVD of (original − dequantized) weight, A = √S·Vᵀ, B = U·√S.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..plan import AdapterPlan

Batches = Callable[[int], Iterable[dict[str, torch.Tensor]]]
Layers = Callable[[], dict[str, Any]]


def lora_config_kwargs(plan: AdapterPlan) -> dict[str, Any]:
    """Extra ``LoraConfig`` arguments for the plan's init (EVA is chosen at config time)."""
    if plan.init.name != "eva":
        return {}
    from peft import EvaConfig

    return {"init_lora_weights": "eva", "eva_config": EvaConfig(**plan.init.eva)}


def initialize(model: Any, plan: AdapterPlan, layers: Layers, *, adapter: str, batches: Batches | None,
               model_dir: Path | None) -> None:
    """Run the plan's init on a freshly built peft model (a no-op for ``default``). ``layers()`` maps
    base-model module names to the model's peft LoRA layers."""
    if plan.init.name == "eva":
        if batches is None:
            raise ConfigError("EVA init needs training data", hint="train with a data section in the config")
        eva(model, plan, layers, batches(plan.init.batches), adapter=adapter)
    elif plan.init.name == "loftq":
        if model_dir is None:
            raise ConfigError("LoftQ init needs the original safetensors of the base model")
        loftq(model, layers(), model_dir, adapter=adapter)


def eva(model: Any, plan: AdapterPlan, layers: Layers, batches: Iterable[dict[str, torch.Tensor]], *,
        adapter: str) -> None:
    """peft's EVA on ``batches``; the plan follows the ranks (and alphas) EVA chose."""
    from peft import initialize_lora_eva_weights

    initialize_lora_eva_weights(model, dataloader=list(batches), adapter_name=adapter, show_progress_bar=False)
    found = layers()
    for m in plan.injected():
        layer = found.get(m.name)
        rank = layer.r[adapter] if layer is not None else 0
        alpha = float(layer.lora_alpha[adapter]) if layer is not None else m.alpha
        plan.update(m.name, step=0, strategy="eva", reason="EVA rank redistribution by explained variance",
                    rank=rank, alpha=alpha, active=m.active and rank > 0)


def loftq(model: Any, layers: dict[str, Any], model_dir: Path, *, adapter: str) -> None:
    """Every LoRA starts as LoftQ's correction of its 4-bit base weight (peft's on CUDA/XPU)."""
    from peft.tuners.lora import Linear4bit

    not_4bit = [name for name, layer in layers.items() if not isinstance(layer, Linear4bit)]
    if not_4bit:
        raise ConfigError(f"LoftQ init corrects bitsandbytes 4-bit quantization, but {not_4bit[0]} "
                          f"({len(not_4bit)} modules) is not a 4-bit layer", hint="use quantizer: {name: bnb-nf4}")
    if next(iter(layers.values())).get_base_layer().weight.device.type in ("cuda", "xpu"):
        from peft import replace_lora_weights_loftq

        replace_lora_weights_loftq(model, model_path=str(model_dir), adapter_name=adapter)
        return
    _loftq_cpu(layers, model_dir, adapter)


@torch.no_grad()
def _loftq_cpu(layers: dict[str, Any], model_dir: Path, adapter: str) -> None:
    from ..spectral.sources import dense_weight, safetensors_source

    for name, original in safetensors_source(model_dir, names=list(layers)):
        layer = layers[name]
        residual = original.float() - dense_weight(layer.get_base_layer())
        u, s, vh = torch.linalg.svd(residual, full_matrices=False)
        r = layer.r[adapter]
        root = s[:r].sqrt()
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        a.data = (root[:, None] * vh[:r]).to(a.dtype)
        b.data = (u[:, :r] * root).to(b.dtype)
