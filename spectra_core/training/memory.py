"""Memory estimate of a planned run, without loading weights (the model is built on the meta device)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..adapters import peft_targets
from ..builtins.quantizers import base_bytes_per_param, kept_in_float, other_bytes_per_param, quantizes_experts
from ..expert_plan import by_tensor
from ..plan import AdapterPlan

LORA_BYTES = 4  # peft keeps adapter weights in float32
ADAMW_BYTES = 8 + 4  # two moments + the gradient, float32


def estimate_memory(model_dir: Path, quantizer: Any, plan: AdapterPlan, *, trust_remote_code: bool = False) -> dict[str, int]:
    """Bytes of the base (quantized linear layers + the rest), LoRA weights, gradients + optimizer state.

    Activations are not included: they depend on batch size, sequence length and checkpointing.
    """
    import torch
    from transformers import AutoConfig
    from transformers.pytorch_utils import Conv1D

    from ..targets import meta_model

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    model = meta_model(config, trust_remote_code=trust_remote_code)
    head = model.get_output_embeddings()
    float_kept = set(kept_in_float(model, quantizer))
    quantized = {id(m.weight) for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))
                 and m is not head and name not in float_kept and quantizer.name != "none"}
    if quantizes_experts(quantizer):
        quantized |= {id(p) for p in model.parameters() if p.ndim == 3}
    q_params = sum(p.numel() for p in model.parameters() if id(p) in quantized)
    other = sum(p.numel() for p in model.parameters() if id(p) not in quantized)
    tensors = by_tensor(plan)  # a fused tensor's LoRA holds its largest expert rank for every expert
    lora = sum(t.rank * (sum(plan.modules[t.name].shape) if t.kind == "module"
                         else sum(tensors[t.name][0].shape) * len(tensors[t.name])) for t in peft_targets(plan))
    trainable = plan.trainable_parameters()
    out = {
        "base_quantized_params": q_params,
        "base_other_params": other,
        "base_bytes": int(q_params * base_bytes_per_param(quantizer) + other * other_bytes_per_param(quantizer)),
        "lora_params": lora,
        "lora_bytes": lora * LORA_BYTES,
        "trainable_params": trainable,
        "optimizer_bytes": trainable * ADAMW_BYTES,
    }
    out["total_bytes"] = out["base_bytes"] + out["lora_bytes"] + out["optimizer_bytes"]
    return out
