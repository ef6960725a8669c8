"""Reading quantized linear weights: bitsandbytes 4-bit and torchao NF4 back to dense float tensors."""

from __future__ import annotations

import torch

from .errors import InputError


def guard_bnb_cpu_repack(model: torch.nn.Module) -> int:
    """Stop bitsandbytes ≥0.49 from repacking 4-bit weights in place on avx512_bf16 CPUs.

    An eval-mode no-grad forward would otherwise rewrite the weight layout, after which LoRA gets no
    gradients and ``dequantize_4bit`` returns wrong values. Returns the number of layers guarded.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def dense_weight(module: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as a dense tensor: bitsandbytes 4-bit and torchao NF4 are dequantized."""
    w = module.weight
    state = getattr(w, "quant_state", None)
    if state is not None:  # bitsandbytes Params4bit
        import bitsandbytes.functional as bf

        return bf.dequantize_4bit(w.data, state).float()
    if hasattr(w, "get_original_weight"):  # torchao NF4Tensor
        return w.get_original_weight().float()
    if w.dtype in (torch.int8, torch.uint8) and hasattr(module, "state"):  # bnb 8-bit
        raise InputError(f"module {type(module).__name__} holds 8-bit weights; scan the float checkpoint instead")
    return w.detach()
