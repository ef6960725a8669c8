"""Data- and quantization-aware LoRA initialisation (the plan's ``init``), through peft's own methods
(called in :mod:`spectra_core.adapters`).

* EVA: ``LoraConfig(init_lora_weights="eva", eva_config=EvaConfig(...))`` then
  ``peft.initialize_lora_eva_weights`` on the run's first training batches; the ranks EVA
  redistributes are written back into the plan (with history).
* LoftQ: ``peft.replace_lora_weights_loftq`` with the original safetensors (on CUDA/XPU; the same
  single LoftQ step on a CPU base, see :func:`spectra_core.adapters.initialize_loftq`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .. import adapters
from ..automodel import is_seq2seq
from ..errors import ConfigError
from ..plan import AdapterPlan

Batches = Callable[[int], Iterable[dict[str, torch.Tensor]]]


def initialize(model: Any, plan: AdapterPlan, *, batches: Batches | None, model_dir: Path | None) -> None:
    """Run the plan's init on a freshly built peft model (a no-op for ``default``)."""
    if plan.init.name == "eva":
        if batches is None:
            raise ConfigError("EVA init needs training data", hint="train with a data section in the config")
        if is_seq2seq(model.config):
            raise ConfigError("EVA init (peft's) masks every layer's inputs with one token mask, which an "
                              "encoder-decoder's two stacks (input length, target length) do not share",
                              hint="use lora_init: {name: default} (or loftq on a bnb-nf4 base) for this model")
        eva(model, plan, batches(plan.init.batches))
    elif plan.init.name == "loftq":
        if model_dir is None:
            raise ConfigError("LoftQ init needs the original safetensors of the base model")
        from ..spectral.sources import safetensors_source

        adapters.initialize_loftq(model, lambda names: iter(safetensors_source(model_dir, names=names)),
                                  str(model_dir))


def eva(model: Any, plan: AdapterPlan, batches: Iterable[dict[str, torch.Tensor]]) -> None:
    """peft's EVA on ``batches``; the plan follows the ranks (and alphas) EVA chose."""
    chosen = adapters.initialize_eva(model, list(batches))
    for m in plan.injected():
        rank, alpha = chosen.get(m.name, (0, m.alpha))
        plan.update(m.name, step=0, strategy="eva", reason="EVA rank redistribution by explained variance",
                    rank=rank, alpha=alpha, active=m.active and rank > 0)
