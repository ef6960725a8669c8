"""A serving-ready copy of a PEFT LoRA adapter: one rank, one ``lora_alpha``, scaling folded into ``B``.

Servers and converters that read only ``r`` and ``lora_alpha`` from ``adapter_config.json`` apply one
scale to every module; vLLM's ``PEFTHelper`` (``vllm/lora/peft_helper.py``) keeps only its own fields
(``r``, ``lora_alpha``, ``target_modules``, ``use_rslora``, ...), drops ``rank_pattern`` and
``alpha_pattern``, and scales every module by ``lora_alpha / r``. A mixed-rank adapter would load
there with wrong scales; this copy computes the same function with a single scale of 1:

    A' = [A; 0]  (R × in),   B' = [B · s_m, 0]  (out × R),   r = lora_alpha = R,  use_rslora = false

where ``s_m`` is the module's own peft scaling (``alpha_m / r_m``, or ``alpha_m / sqrt(r_m)`` with rsLoRA).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from spectra_core.errors import InputError

SERVING_DIR = "serving"  # where the peft-adapter exporter puts the uniform copy
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def module_scaling(config: dict[str, Any], module: str, rank: int) -> float:
    """peft's scaling of ``module`` under ``config`` (patterns matched as peft matches them)."""
    from spectra_core.adapters import pattern_value

    expected = pattern_value(config.get("rank_pattern") or {}, module, config["r"])
    if expected != rank:
        raise InputError(f"{module}: adapter_config.json says rank {expected}, the stored weights have rank {rank}",
                         hint="the adapter directory is inconsistent; export it again from the run")
    alpha = pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def write_uniform_adapter(source: Path, destination: Path, rank: int | None = None) -> int:
    """Write the padded, scale-folded copy of the adapter in ``source`` into the existing ``destination``
    directory; returns the common rank (``rank``, default the largest rank in the adapter)."""
    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((Path(source) / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora"):
        raise InputError("a DoRA adapter cannot be made uniform (its magnitude depends on the scale)",
                         hint="export it without uniform: true")
    if config.get("target_parameters"):
        raise InputError("an adapter on fused MoE expert tensors (peft target_parameters) cannot be made uniform: "
                         "their LoRA factors interleave the experts, and servers that need a uniform adapter do not "
                         "load target_parameters", hint="export it without uniform: true")
    tensors = load_file(str(Path(source) / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, Any]] = {}
    for key in tensors:
        match = _LORA_KEY.match(key)
        if match:
            pairs.setdefault(match["module"], {})[match["ab"]] = key
    unpaired = sorted(m for m, keys in pairs.items() if len(keys) != 2)
    if unpaired or not pairs:
        what = f"modules without both lora_A and lora_B: {', '.join(unpaired[:3])}" if unpaired else "no LoRA weights"
        raise InputError(f"{source}/adapter_model.safetensors has {what}",
                         hint="export from a run whose final/ is a stock PEFT LoRA adapter")
    ranks = {m: tensors[keys["A"]].shape[0] for m, keys in pairs.items()}
    common = max(ranks.values())
    if rank is not None:
        if rank < common:
            raise InputError(f"uniform rank {rank} is below the adapter's largest rank {common}",
                             hint=f"set uniform_rank to at least {common}, or leave it unset")
        common = rank
    out = dict(tensors)
    for module, keys in pairs.items():
        a, b = tensors[keys["A"]], tensors[keys["B"]]
        r = ranks[module]
        scale = module_scaling(config, module, r)
        out[keys["A"]] = torch.cat([a, a.new_zeros(common - r, a.shape[1])]).contiguous()
        out[keys["B"]] = torch.cat([b * scale, b.new_zeros(b.shape[0], common - r)], dim=1).contiguous()
    save_file(out, str(Path(destination) / "adapter_model.safetensors"), metadata={"format": "pt"})
    config |= {"r": common, "lora_alpha": common, "rank_pattern": {}, "alpha_pattern": {}, "use_rslora": False}
    (Path(destination) / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                                           encoding="utf-8")
    return common
