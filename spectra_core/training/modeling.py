"""From a plan to a peft model: load the quantized base, inject the plan's LoRA, load a trained run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .. import adapters
from ..plan import AdapterPlan
from . import lora_init
from .lora_init import Batches


def load_base(config: Any, quantizer: Any, model_dir: Any, *, gradient_checkpointing: bool = False) -> Any:
    """The frozen base model from the configured quantizer, ready for LoRA.

    Gradient checkpointing is non-reentrant and the input-embedding grad hook transformers adds is
    removed, so layers below the lowest adapted layer build no autograd graph at all.
    """
    model = quantizer.load(model_dir, trust_remote_code=config.model.trust_remote_code)
    for p in model.parameters():
        p.requires_grad_(False)
    model.config.use_cache = False
    if gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        drop_input_grad_hook(model)
    return model


def drop_input_grad_hook(model: Any) -> None:
    """Undo ``enable_input_require_grads`` (not needed with non-reentrant checkpointing)."""
    if getattr(model, "_require_grads_hook", None) is not None:
        model.disable_input_require_grads()


def build_peft_model(base: Any, plan: AdapterPlan, *, seed: int = 0, batches: Batches | None = None,
                     model_dir: Path | None = None, initialize: bool = True) -> Any:
    """The plan's LoRA on ``base`` (:func:`spectra_core.adapters.inject`) after checking the plan fits;
    LoRA initialised from ``seed``, then by the plan's ``init`` (EVA from ``batches``, LoftQ from the
    safetensors in ``model_dir``) unless ``initialize`` is False (resume: the checkpoint holds every
    LoRA weight); groups tied and requires_grad following the plan afterwards."""
    adapters.check_plan(plan, base)
    plan.check_init()
    extra = adapters.init_config_kwargs(plan) if initialize else {}

    def init(model: Any) -> None:
        lora_init.initialize(model, plan, batches=batches, model_dir=model_dir)

    model = adapters.inject(base, plan, seed=seed, config=extra, initialize=init if initialize else None)
    drop_input_grad_hook(model.get_base_model())
    return model


def trainable_named_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every parameter that trains, each shared parameter once."""
    for name, p in model.named_parameters():
        if p.requires_grad:
            yield name, p


def load_trained_model(run: Any) -> Any:
    """A finished run's model: base from the run's quantizer + ``final/`` adapter; groups re-tied."""
    from ..registry import get_registry

    cfg = run.config
    quantizer = (run.registry or get_registry()).create("quantizer", cfg.quantizer.name, cfg.quantizer.options)
    model = adapters.load(load_base(cfg, quantizer, run.base_model_dir()), run.run_dir / "final", run.plan)
    model.eval()
    return model
