"""AdamW over the plan's trainable LoRA parameters, grouped by LR scale, and the LR schedule."""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..plan import AdapterPlan
from ..adapters import lora_layers, lora_parameters, trainable_layers


def param_groups(model: torch.nn.Module, plan: AdapterPlan, lr: float, weight_decay: float) -> list[dict]:
    """One group per distinct ``lr_scale`` of active modules; only parameters that train, each once.
    An expert tensor sits in the group of its largest expert LR scale (:mod:`spectra_core.experts`).

    Each group carries ``names`` (parameter names, for checkpoints) and ``initial_lr``.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = trainable_layers(plan)
    groups: dict[float, dict] = {}
    seen: set[int] = set()
    for module_name, layer in lora_layers(model).items():
        scale = trainable.get(module_name)
        if scale is None:
            continue
        for p in lora_parameters(layer):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            g = groups.setdefault(scale, {"params": [], "names": [], "lr_scale": scale,
                                          "initial_lr": lr * scale, "lr": lr * scale, "weight_decay": weight_decay})
            g["params"].append(p)
            g["names"].append(names[id(p)])
    return [groups[k] for k in sorted(groups)]


def make_optimizer(model: torch.nn.Module, plan: AdapterPlan, lr: float, weight_decay: float) -> torch.optim.AdamW:
    groups = param_groups(model, plan, lr, weight_decay)
    if not groups:
        raise InputError("no trainable parameter: the plan activates no module",
                         hint="activate at least one module (allocator options) or use mode: targeted")
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, foreach=False)


def regroup(optimizer: torch.optim.Optimizer, groups: list[dict]) -> None:
    """Replace the optimizer's param groups, keeping the state of parameters whose shape is unchanged."""
    defaults = {k: v for k, v in optimizer.defaults.items() if k not in ("lr", "weight_decay")}
    optimizer.param_groups = [{**defaults, **g} for g in groups]
    keep = {p for g in groups for p in g["params"]}
    for p in list(optimizer.state):
        state = optimizer.state[p]
        if p not in keep or any(torch.is_tensor(v) and v.dim() and v.shape != p.shape for v in state.values()):
            del optimizer.state[p]


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
