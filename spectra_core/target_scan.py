"""Scanning what the targets name: Conv1D weights turned ``out × in``, fused experts per expert slice, and
checkpoints that store experts one by one read through the loaded model (so names are the loaded model's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .automodel import load_pretrained
from .errors import InputError
from .strategies import TargetModule
from .targets import meta_model

if TYPE_CHECKING:
    import torch


def scan_targets(model_dir: Any, scorer: Any, targets: list[TargetModule], *, progress: bool = True,
                 trust_remote_code: bool = False) -> Any:
    """Scores of ``targets`` (:func:`spectra_core.targets.plan_targets`), read from the checkpoint: Conv1D
    weights turned ``out × in``, each expert of a fused tensor scored on its own slice. A checkpoint that
    stores experts one by one (transformers fuses them when loading) is scanned from the float model
    loaded on the CPU, so the names are the loaded model's."""
    from .spectral.scan import run_scan
    from .spectral.sources import open_weights, transposed

    names = [t.name for t in targets]
    source = open_weights(model_dir)
    experts = [t.name for t in targets if t.kind == "expert"]
    if experts and not set(experts) <= set(source.names()):
        source = open_weights(load_float(model_dir, trust_remote_code=trust_remote_code))
    flip = [t.name for t in targets if t.fan_in_fan_out]
    if flip:
        source = transposed(source, flip)
    return run_scan(source, scorer, names=names, progress=progress).scores


def checkpoint_source(model_dir: Any, *, trust_remote_code: bool = False) -> Any:
    """What ``spectra scan DIR`` reads: the weight files, unless they store MoE experts one by one
    (``experts.N.w1``) while the loaded model fuses them (``experts.gate_up_proj``): then the float model
    loaded on the CPU, so the scores name the loaded model's parameters. Any other directory: its path."""
    from pathlib import Path

    from transformers import AutoConfig

    from .spectral.sources import open_weights

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        return model_dir
    source = open_weights(path)
    if not any(".experts." in n for n in source.names()):
        return source
    try:
        model = meta_model(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code),
                           trust_remote_code=trust_remote_code)
    except (InputError, ValueError, OSError):
        return source  # not a causal LM spectra trains: scan the files as they are
    fused = [n for n, p in model.named_parameters() if p.ndim == 3]
    if not fused or f"{fused[0]}.0" in set(source.names()):
        return source
    return open_weights(load_float(path, trust_remote_code=trust_remote_code))


def load_float(model_dir: Any, *, trust_remote_code: bool = False) -> torch.nn.Module:
    """The model in float32 on the CPU, from safetensors."""
    import torch

    return load_pretrained(model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
