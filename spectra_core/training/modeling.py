"""From a plan to a peft model: load the quantized base, check the plan, inject LoRA, load a trained run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..plan import AdapterPlan
from ..spectral.sources import dense_weight, with_lora_delta
from . import lora_init
from .lora_init import Batches

ADAPTER = "default"
PEFT_PREFIX = "base_model.model."


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


def check_plan(plan: AdapterPlan, model: torch.nn.Module) -> None:
    """Every injected module exists, is linear-like, and its rank fits its shape."""
    modules = dict(model.named_modules())
    for m in plan.injected():
        module = modules.get(m.name)
        if module is None:
            raise InputError(f"plan module {m.name!r} is not in the model",
                             hint="re-run `spectra plan` for this model (the plan was made for another one)")
        out_f, in_f = getattr(module, "out_features", m.shape[0]), getattr(module, "in_features", m.shape[1])
        if m.rank > min(out_f, in_f):
            raise InputError(f"rank {m.rank} of {m.name} exceeds its smaller dimension "
                             f"(weight {out_f}×{in_f}): a LoRA rank must be ≤ {min(out_f, in_f)}",
                             hint="lower the rank (allocator options) for this module type")


def build_peft_model(base: Any, plan: AdapterPlan, *, seed: int = 0, batches: Batches | None = None,
                     model_dir: Path | None = None, initialize: bool = True) -> Any:
    """``get_peft_model`` with ``LoraConfig(**plan.lora_kwargs(), task_type="CAUSAL_LM", lora_dropout=0)``;
    LoRA initialised from ``seed``, then by the plan's ``init`` (EVA from ``batches``, LoftQ from the
    safetensors in ``model_dir``) unless ``initialize`` is False (resume: the checkpoint holds every
    LoRA weight); requires_grad follows the plan (inactive LoRA frozen)."""
    from peft import LoraConfig, get_peft_model

    check_plan(plan, base)
    plan.check_init()
    torch.manual_seed(seed)
    extra = lora_init.lora_config_kwargs(plan) if initialize else {}
    model = get_peft_model(base, LoraConfig(**plan.lora_kwargs(), **extra, task_type="CAUSAL_LM", lora_dropout=0),
                           low_cpu_mem_usage="eva_config" in extra)  # EVA fills the weights (peft's advice)
    if initialize:
        lora_init.initialize(model, plan, lambda: lora_modules(model), adapter=ADAPTER, batches=batches,
                             model_dir=model_dir)
    drop_input_grad_hook(model.get_base_model())
    sync_requires_grad(model, plan)
    return model


def lora_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Base-model module name → its peft LoRA layer."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            out[name.removeprefix(PEFT_PREFIX)] = module
    return out


def lora_parameters(layer: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [*layer.lora_A[ADAPTER].parameters(), *layer.lora_B[ADAPTER].parameters()]


def sync_requires_grad(model: torch.nn.Module, plan: AdapterPlan) -> None:
    """LoRA of active modules trains; every other parameter is frozen.

    Parameters shared by a group (tied by a gradient merger) train if any member is active.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for name, layer in lora_modules(model).items():
        entry = plan.modules.get(name)
        if entry is not None and entry.active:
            for p in lora_parameters(layer):
                p.requires_grad_(True)


def trainable_named_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every parameter that trains, each shared parameter once."""
    for name, p in model.named_parameters():
        if p.requires_grad:
            yield name, p


def base_weight_float(module: torch.nn.Module) -> torch.Tensor:
    """The base weight of a (possibly LoRA-wrapped, possibly 4-bit) linear layer, as float32."""
    return dense_weight(module.get_base_layer() if hasattr(module, "get_base_layer") else module).float()


def effective_weight(module: torch.nn.Module) -> torch.Tensor:
    """float32 base weight + the LoRA delta, where the module carries a LoRA not yet merged into the base."""
    with torch.no_grad():
        return with_lora_delta(module, base_weight_float(module), [ADAPTER])


def load_trained_model(run: Any) -> Any:
    """A finished run's model: base from the run's quantizer + ``final/`` adapter; groups re-tied."""
    from peft import PeftModel

    from ..registry import get_registry
    from .session import Session

    registry = run.registry or get_registry()
    cfg = run.config
    quantizer = registry.create("quantizer", cfg.quantizer.name, cfg.quantizer.options)
    base = load_base(cfg, quantizer, run.base_model_dir())
    model = PeftModel.from_pretrained(base, run.run_dir / "final", is_trainable=False)
    if cfg.gradient_merger is not None:
        merger = registry.create("gradient_merger", cfg.gradient_merger.name, cfg.gradient_merger.options)
        merger.tie(Session(model, run.plan))
    model.eval()
    return model
