"""Built-in quantizers: how the frozen base model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from spectra_core.strategies import Quantizer, StrategyOptions


class NoQuantizer(Quantizer):
    """No quantization: the base stays in float32 or bfloat16."""

    name = "none"

    class Options(StrategyOptions):
        dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32")

    def load(self, model_dir: Path, *, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, self.options.dtype), trust_remote_code=trust_remote_code,
            use_safetensors=True)


QUANTIZERS = [NoQuantizer]
