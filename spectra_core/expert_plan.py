"""MoE experts in a plan: every expert of a fused 3-D tensor is an entry of its own (``kind: expert``,
named ``{tensor}.{i}`` as a scan names its slice). These are the plan-level rules that turn those entries
into peft's one LoRA per fused tensor; :mod:`spectra_core.experts` keeps the live LoRA to them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .plan import AdapterPlan, ModulePlan


def lora_scaling(alpha: float, rank: int, use_rslora: bool) -> float:
    """peft's LoRA scale: alpha/rank, or alpha/√rank with rsLoRA."""
    return alpha / (math.sqrt(rank) if use_rslora else rank)


def split(name: str) -> tuple[str, int]:
    """``("…experts.gate_up_proj", 3)`` for the expert entry ``…experts.gate_up_proj.3``."""
    tensor, _, index = name.rpartition(".")
    return tensor, int(index)


def by_tensor(plan: AdapterPlan) -> dict[str, list[ModulePlan]]:
    """The plan's expert entries grouped by fused tensor, each list in expert order."""
    out: dict[str, list[ModulePlan]] = {}
    for m in plan.modules.values():
        if m.kind == "expert":
            out.setdefault(split(m.name)[0], []).append(m)
    return {t: sorted(ms, key=lambda m: split(m.name)[1]) for t, ms in out.items()}


def carries_lora(plan: AdapterPlan, entry: ModulePlan) -> bool:
    """True when the entry owns LoRA components (rank > 0, and active unless the mode is all-inactive)."""
    return entry.rank > 0 and (entry.active or plan.mode == "all-inactive")


def tensor_lora(plan: AdapterPlan, tensor: str, entries: list[ModulePlan]) -> tuple[int, float] | None:
    """(rank, alpha) of ``tensor``'s peft LoRA: its experts' largest rank, at the one scale they share;
    None when no expert carries a LoRA. Experts of one tensor at different scales are a ConfigError."""
    carried = [m for m in entries if carries_lora(plan, m)]
    if not carried:
        return None
    scales = {round(lora_scaling(m.alpha, m.rank, plan.use_rslora), 12) for m in carried}
    if len(scales) > 1:
        raise ConfigError(f"the experts of {tensor} would train at {len(scales)} LoRA scales "
                          f"({', '.join(f'{s:g}' for s in sorted(scales))}): peft gives a fused expert tensor one "
                          "scale, alpha/rank" + (" (alpha/√rank with rsLoRA)" if plan.use_rslora else ""),
                          hint="give every rank the same alpha/rank ratio (e.g. alpha = 2 × rank in each tier)")
    rank = max(m.rank for m in carried)
    scale = scales.pop()
    return rank, scale * (rank ** 0.5 if plan.use_rslora else rank)


def lr_scale(plan: AdapterPlan, entries: list[ModulePlan]) -> float:
    """The LR scale of the tensor's optimizer group: the largest of its training experts (1 when none trains)."""
    return max((m.lr_scale for m in entries if m.active and m.rank > 0), default=1.0)


def components(plan: AdapterPlan, entries: list[ModulePlan], experts: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per expert and rank component of a tensor's LoRA (``[experts, rank]``): whether it is its expert's
    (live; an expert without an entry owns none), and its step relative to the tensor's optimizer group
    (the expert's LR scale over :func:`lr_scale`; 0 when it does not train)."""
    live = torch.zeros(experts, rank, dtype=torch.bool)
    step = torch.zeros(experts, rank)
    group = lr_scale(plan, entries)
    for m in entries:
        e, r = split(m.name)[1], (m.rank if carries_lora(plan, m) else 0)
        live[e, :r] = True
        if m.active:
            step[e, :r] = m.lr_scale / group
    return live, step
