"""Built-in quantizers: how the frozen base model is loaded.

* ``none``: float32/bfloat16/float16 base.
* ``bnb-nf4``: bitsandbytes 4-bit NF4 (double quantization), the classic QLoRA base.
* ``torchao-nf4``: torchao's ``NF4Tensor`` weights inside plain ``nn.Linear`` layers; peft's stock
  LoRA ``Linear`` wraps them (``F.linear`` dispatches to NF4 dequantize + matmul), no custom layer.

Every loader reads safetensors only (``use_safetensors=True``) and runs remote code only when the
config says so. :func:`base_bytes_per_param` gives the storage cost of a quantized weight, used by
``spectra plan`` and reports to estimate memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from spectra_core.adapters import prepare_for_kbit_training
from spectra_core.automodel import load_pretrained
from spectra_core.quantized import guard_bnb_cpu_repack
from spectra_core.strategies import Quantizer, StrategyOptions

from spectra_core.quant_coverage import plain_linears, quantize_bnb_subclasses

Dtype = Literal["float32", "bfloat16", "float16"]
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
NF4_BLOCK = 64


def _dtype(name: str):
    import torch

    return getattr(torch, resolve_compute_dtype(name))


def resolve_compute_dtype(name: str) -> str:
    """``auto``: bfloat16 on CUDA; float32 on CPU, where bitsandbytes' bf16 path (with the repack
    guard on) was measured ~2.6× slower than float32 for SmolLM2-135M's forward pass."""
    if name != "auto":
        return name
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def device_map() -> str | dict[str, int]:
    """Where a 4-bit base is loaded: the whole model on this process's GPU (``LOCAL_RANK`` under
    torchrun/accelerate, else GPU 0), or the CPU. Never ``"auto"``: that splits one model over every
    visible GPU in each process, so under torchrun all ranks would share (and overfill) the same GPUs."""
    from spectra_core.devices import local_device

    device = local_device()
    return {"": device.index} if device.type == "cuda" else "cpu"


class NoQuantizer(Quantizer):
    """No quantization: the base stays in float32 or bfloat16."""

    name = "none"

    class Options(StrategyOptions):
        dtype: Dtype = Field(default="float32")

    def load(self, model_dir: Path, *, trust_remote_code: bool = False):
        return load_pretrained(model_dir, dtype=_dtype(self.options.dtype), trust_remote_code=trust_remote_code)

    def bytes_per_param(self) -> float:
        return DTYPE_BYTES[self.options.dtype]

    def other_bytes_per_param(self) -> float:
        """Bytes per parameter of what is not quantized (embeddings, norms)."""
        return DTYPE_BYTES[self.options.dtype]


class BnbNF4Quantizer(Quantizer):
    """bitsandbytes 4-bit NF4 with double quantization (QLoRA)."""

    name = "bnb-nf4"
    quantizes_experts = True  # fused 3-D MoE experts too, once wrapped by peft (see quant_coverage.quantize_bnb_experts)
    keeps_fp32_modules = True  # transformers' bitsandbytes loading leaves the model's _keep_in_fp32_modules in float

    class Options(StrategyOptions):
        compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
            default="auto", description="Dtype of the dequantized matmul; auto: bfloat16 on CUDA, float32 on CPU.")
        double_quant: bool = Field(default=True, description="Quantize the block scales too (~0.4 bit/param saved).")

    def load(self, model_dir: Path, *, trust_remote_code: bool = False):
        from transformers import BitsAndBytesConfig

        compute = _dtype(self.options.compute_dtype)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=self.options.double_quant,
                                   bnb_4bit_compute_dtype=compute)
        model = load_pretrained(model_dir, quantization_config=quant, dtype=compute, device_map=device_map(),
                                trust_remote_code=trust_remote_code)
        quantize_bnb_subclasses(model, quant)  # e.g. Falcon's FalconLinear, which transformers leaves in float
        # fused 3-D MoE experts: quantized once their LoRA is in place (spectra_core.adapters.inject)
        guard_bnb_cpu_repack(model)
        # gradient checkpointing is switched on by the trainer (training.gradient_checkpointing),
        # non-reentrant, so frozen layers below the first adapter need no input gradients
        return prepare_for_kbit_training(model)

    def bytes_per_param(self) -> float:
        # 4-bit codes + one absmax per 64-weight block: 8-bit (+ fp32 per 256 blocks) with double
        # quantization, fp32 without.
        scale = (1 + 4 / 256) if self.options.double_quant else 4
        return 0.5 + scale / NF4_BLOCK

    def other_bytes_per_param(self) -> float:
        return 4.0  # prepare_model_for_kbit_training upcasts embeddings and norms to float32


class TorchaoNF4Quantizer(Quantizer):
    """torchao NF4Tensor weights (double-quantized scales) in plain nn.Linear layers."""

    name = "torchao-nf4"

    class Options(StrategyOptions):
        compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(default="bfloat16")
        skip: list[str] = Field(default_factory=lambda: ["lm_head"],
                                description="Substrings of linear layers to keep unquantized.")

    def load(self, model_dir: Path, *, trust_remote_code: bool = False):
        import torch

        model = load_pretrained(  # on the GPU first: NF4 conversion is much faster there
            model_dir, dtype=_dtype(self.options.compute_dtype), trust_remote_code=trust_remote_code,
            device_map=device_map())
        plain_linears(model, self.options.skip)  # NF4 tensors work in plain nn.Linear only (not Conv1D, FalconLinear)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not any(s in name for s in self.options.skip):
                module.weight = torch.nn.Parameter(to_nf4_weight(module.weight.detach()), requires_grad=False)
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def bytes_per_param(self) -> float:
        return 0.5 + (1 + 4 / 256) / NF4_BLOCK

    def other_bytes_per_param(self) -> float:
        return DTYPE_BYTES[self.options.compute_dtype]


def to_nf4_weight(weight):
    """A torchao NF4Tensor of ``weight``; the scaler block shrinks to a divisor of the block count."""
    from torchao.quantization import to_nf4

    blocks = weight.numel() // NF4_BLOCK
    if weight.numel() % NF4_BLOCK:
        raise ValueError(f"torchao NF4 needs a multiple of {NF4_BLOCK} weights, got shape {tuple(weight.shape)}")
    scaler_block = max(d for d in range(1, 257) if blocks % d == 0)
    return to_nf4(weight, NF4_BLOCK, scaler_block)


def base_bytes_per_param(quantizer: Quantizer) -> float:
    """Bytes per parameter of a quantized (linear) base weight under ``quantizer``."""
    fn = getattr(quantizer, "bytes_per_param", None)
    return float(fn()) if fn is not None else 4.0


def quantizes_experts(quantizer: Quantizer) -> bool:
    """True when ``quantizer`` stores fused 3-D MoE expert tensors in 4-bit as well (else they stay float)."""
    return bool(getattr(quantizer, "quantizes_experts", False))


def kept_in_float(model: Any, quantizer: Quantizer) -> list[str]:
    """Names of the linear layers ``quantizer`` leaves in float32 because the model class keeps them so
    (``_keep_in_fp32_modules``, e.g. T5's ``wo`` for fp16 stability), as transformers' bitsandbytes loading does."""
    import torch

    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ()) if getattr(quantizer, "keeps_fp32_modules", False) \
        else set()
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and keep & set(name.split("."))]


def other_bytes_per_param(quantizer: Quantizer) -> float:
    """Bytes per parameter of the parameters the quantizer leaves unquantized."""
    fn = getattr(quantizer, "other_bytes_per_param", None)
    return float(fn()) if fn is not None else 4.0


QUANTIZERS = [NoQuantizer, BnbNF4Quantizer, TorchaoNF4Quantizer]
