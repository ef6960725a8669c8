"""Quantizer ``example-float32``: the base in plain float32 (no quantization at all)."""

from __future__ import annotations

from pathlib import Path

import torch

from spectra_core import Quantizer


class Float32Loader(Quantizer):
    """Loads the causal LM in float32 from safetensors; every weight stays a plain tensor."""

    name = "example-float32"

    def load(self, model_dir: Path, *, trust_remote_code: bool = False):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True,
                                                    trust_remote_code=trust_remote_code)
