"""Per-expert LoRA on fused MoE expert tensors, realised on peft's one LoRA per tensor.

Every expert of a fused 3-D tensor is a plan entry of its own (``kind: expert``, named
``{tensor}.{i}`` as a scan names it), selected, ranked and LR-scaled like any linear module. peft
(``target_parameters``) gives the tensor one LoRA with one rank and one scale for all its experts, so
the core realises the plan on top of it: the tensor's LoRA gets the largest rank of its experts, and
each expert keeps only the rank components its entry owns (the others are zero and stay zero). Around
every optimizer step (:class:`ExpertSteps`) the gradient outside trainable components is zeroed and
each expert's step is scaled by its LR scale relative to its tensor's optimizer group; components that
do not train are restored exactly afterwards, so weight decay and momentum never move a frozen expert.

A saved adapter is a stock peft one (the tensor's rank, zeros where an expert has fewer components).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .plan import AdapterPlan, ModulePlan


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
    from .adapters import lora_scaling

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


@dataclass
class _Tensor:
    """One fused tensor's LoRA and, per component, whether it is live and how far it steps."""

    name: str
    layer: torch.nn.Module
    live: torch.Tensor   # [experts, rank] bool: the component belongs to its expert's LoRA
    step: torch.Tensor   # [experts, rank] float: LR scale relative to the group's (0: does not train)

    def masks(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``values`` laid out as peft's factors: A rows expert-major ``[E·r, 1]``, B columns rank-major ``[1, r·E]``."""
        return values.reshape(-1, 1), values.T.reshape(1, -1)


class ExpertSteps:
    """Keeps every fused tensor's LoRA to its experts' plan entries (see the module docstring).

    Built from the plan after peft injected the LoRA, and rebuilt whenever the plan changes;
    :meth:`zero_dead` clears components no expert owns, :meth:`before_step` / :meth:`after_step`
    wrap the optimizer step. Tensors whose experts all train alike need nothing and are left out.
    """

    def __init__(self, model: torch.nn.Module, plan: AdapterPlan) -> None:
        from .adapters import ADAPTER, experts_of, lora_layers

        layers = lora_layers(model)
        self.tensors: list[_Tensor] = []
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        for tensor, entries in by_tensor(plan).items():
            layer = layers.get(tensor)
            if layer is None:
                continue
            experts, rank = experts_of(layer), int(layer.r[ADAPTER])
            live = torch.zeros(experts, rank, dtype=torch.bool)
            step = torch.zeros(experts, rank)
            group = lr_scale(plan, entries)
            for m in entries:
                e = split(m.name)[1]
                r = m.rank if carries_lora(plan, m) else 0
                live[e, :r] = True
                if m.active:
                    step[e, :r] = m.lr_scale / group
            if not (live.all() and bool((step == 1).all())):
                self.tensors.append(_Tensor(tensor, layer, live, step))

    def _factors(self, t: _Tensor) -> Iterator[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]]:
        """(factor, its live mask, its step scales) for A and B."""
        from .adapters import factors

        f = factors(t.layer)
        live_a, live_b = t.masks(t.live)
        step_a, step_b = t.masks(t.step)
        yield f["A"], live_a, step_a
        yield f["B"], live_b, step_b

    @torch.no_grad()
    def zero_dead(self) -> None:
        """Zero every component no expert owns (after injection, and after each plan change)."""
        for t in self.tensors:
            for p, live, _ in self._factors(t):
                p.mul_(live.to(p.device, p.dtype))

    @torch.no_grad()
    def before_step(self) -> None:
        """Zero the gradient of components that do not train, and remember the factors' values."""
        self._saved = []
        for t in self.tensors:
            for p, _, step in self._factors(t):
                if p.grad is not None:
                    p.grad.mul_((step > 0).to(p.device, p.grad.dtype))
                self._saved.append((p, p.detach().clone()))

    @torch.no_grad()
    def after_step(self) -> None:
        """Scale each component's step by its expert's relative LR scale (0: restored exactly)."""
        steps = [step for t in self.tensors for _, _, step in self._factors(t)]
        for (p, before), step in zip(self._saved, steps):
            scale = step.to(p.device, p.dtype)
            scaled = torch.where(scale == 0, before, before + scale * (p - before))
            p.copy_(torch.where(scale == 1, p, scaled))
        self._saved = []
