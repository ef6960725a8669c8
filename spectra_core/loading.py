"""Open what ``spectra generate`` / ``spectra eval`` are pointed at: a finished run directory (the trained
adapter on its base, loaded as training saw it, groups re-tied) or a model directory (e.g. a ``merged`` export)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    description: str
    run: Any = None  # the Run when a run directory was given


def load_for_inference(target: Path) -> LoadedModel:
    """The model and tokenizer of a run directory (config.yaml + final/) or a HF model directory (config.json)."""
    import torch
    from transformers import AutoTokenizer

    from .automodel import load_pretrained

    target = Path(target)
    if (target / "config.yaml").is_file() and (target / "plan.json").is_file():
        from .run import Run

        run = Run.load(target)
        model = run.peft_model()
        return LoadedModel(model, run.tokenizer(), f"run {target} (adapter on its {run.config.quantizer.name} base)", run)
    if (target / "config.json").is_file():
        model = load_pretrained(target, dtype=torch.float32).eval()
        return LoadedModel(model, AutoTokenizer.from_pretrained(target), f"model {target}")
    raise InputError(f"{target} is neither a spectra run directory (config.yaml, plan.json, final/) nor a model "
                     "directory (config.json)",
                     hint="pass the output_dir of `spectra train`, or a merged export such as RUN_DIR/exports/merged")
