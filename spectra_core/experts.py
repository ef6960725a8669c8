"""Per-expert LoRA on fused MoE expert tensors, realised on peft's one LoRA per tensor.

Every expert of a fused 3-D tensor is a plan entry of its own (``kind: expert``, named
``{tensor}.{i}`` as a scan names it), selected, ranked and LR-scaled like any linear module. peft
(``target_parameters``) gives the tensor one LoRA with one rank and one scale for all its experts, so
the core realises the plan on top of it: the tensor's LoRA gets the largest rank of its experts, and
each expert keeps only the rank components its entry owns (the others are zero and stay zero). Around
every optimizer step (:class:`ExpertSteps`) the gradient outside trainable components is zeroed and
each expert's step is scaled by its LR scale relative to its tensor's optimizer group; components that
do not train are restored exactly afterwards, so weight decay and momentum never move a frozen expert.

Experts share a LoRA (a gradient merger's group, within a layer or across layers) by value: every
member holds the same factors; the group's summed gradient steps the first member's slices, and the
others are set equal to it after the step (the clipping norm counts the shared factors once, as for a
group of linear modules, whose members share one parameter).

A saved adapter is a stock peft one (the tensor's rank, zeros where an expert has fewer components).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .adapters import ADAPTER, component_masks, expert_slices, experts_of, factors, lora_layers
from .expert_plan import by_tensor, components, split

if TYPE_CHECKING:
    from .plan import AdapterPlan


@dataclass
class _Tensor:
    """One fused tensor's LoRA and, per component, whether it is live and how far it steps."""

    layer: torch.nn.Module
    live: torch.Tensor   # [experts, rank] bool: the component belongs to its expert's LoRA
    step: torch.Tensor   # [experts, rank] float: LR scale relative to the group's (0: does not train)


@dataclass
class _Member:
    """One expert of a tied group: its tensor's LoRA layer, its index and its rank."""

    layer: torch.nn.Module
    index: int
    rank: int

    def slices(self, grads: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of its (A, B) components, or of their gradients."""
        f = factors(self.layer)
        return expert_slices(self.layer, self.index, self.rank, (f["A"].grad, f["B"].grad) if grads else None)


class ExpertSteps:
    """Keeps every fused tensor's LoRA to its experts' plan entries (see the module docstring).

    Built from the plan after peft injected the LoRA (:func:`spectra_core.adapters.inject` zeroed the
    components no expert owns), and rebuilt whenever the plan changes; :meth:`before_step` /
    :meth:`after_step` wrap the optimizer step. Tensors whose experts all train alike need nothing and
    are left out.
    """

    def __init__(self, model: torch.nn.Module, plan: AdapterPlan) -> None:
        layers = lora_layers(model)
        self.groups: dict[str, list[_Member]] = {
            gid: members_of(model, plan, members) for gid, members in plan.groups().items()
            if plan.modules[members[0]].kind == "expert"}
        self.tensors: list[_Tensor] = []
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        for tensor, entries in by_tensor(plan).items():
            layer = layers.get(tensor)
            if layer is None:
                continue
            live, step = components(plan, entries, experts_of(layer), int(layer.r[ADAPTER]))
            if not (live.all() and bool((step == 1).all())):
                self.tensors.append(_Tensor(layer, live, step))

    def _factors(self, t: _Tensor) -> Iterator[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]]:
        """(factor, its live mask, its step scales) for A and B."""
        f = factors(t.layer)
        live_a, live_b = component_masks(t.live)
        step_a, step_b = component_masks(t.step)
        yield f["A"], live_a, step_a
        yield f["B"], live_b, step_b

    def group_gradients(self, gid: str) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]] | None:
        """(summed, per member position) gradients ``{"A", "B"}`` of tied expert group ``gid``; None before a backward."""
        members = self.groups[gid]
        if any(p.grad is None for m in members for p in factors(m.layer).values()):
            return None
        own = {i: dict(zip("AB", (g.detach().clone() for g in m.slices(grads=True)))) for i, m in enumerate(members)}
        return {f: sum(o[f] for o in own.values()) for f in "AB"}, own

    @torch.no_grad()
    def set_group_gradient(self, gid: str, grads: dict[str, torch.Tensor]) -> None:
        """The group's gradient goes to its first member's slices; the others' are zeroed (see the module docstring)."""
        members = self.groups[gid]
        for i, m in enumerate(members):
            for f, g in zip("AB", m.slices(grads=True)):
                if i == 0:
                    g.copy_(grads[f].to(g.dtype))
                else:
                    g.zero_()

    @torch.no_grad()
    def before_step(self) -> None:
        """Sum each tied group's gradient into its first member; zero the gradient of components that do
        not train, and remember the factors' values."""
        for gid in self.groups:
            found = self.group_gradients(gid)
            if found is not None:
                self.set_group_gradient(gid, found[0])
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
        for members in self.groups.values():
            tie_values(members)


@torch.no_grad()
def tie_values(members: list[_Member]) -> None:
    """Every member's factors set to the first member's."""
    head = members[0].slices()
    for m in members[1:]:
        for mine, theirs in zip(m.slices(), head):
            mine.copy_(theirs)


@torch.no_grad()
def start_from_mean(members: list[_Member]) -> None:
    """Every member starts from the best rank-r approximation of the members' mean update (as
    :func:`spectra_core.adapters.start_from_mean` for modules): ``A = V_rᵀ``, ``B = U_r S_r``."""
    slices = [m.slices() for m in members]
    mean = sum(b.double() @ a.double() for a, b in slices) / len(slices)
    u, s, vh = torch.linalg.svd(mean, full_matrices=False)
    r = members[0].rank
    for a, b in slices:
        a.copy_(vh[:r].to(a.dtype))
        b.copy_((u[:, :r] * s[:r]).to(b.dtype))


def members_of(model: torch.nn.Module, plan: AdapterPlan, names: list[str]) -> list[_Member]:
    """The tie members of expert entries ``names``."""
    layers = lora_layers(model)
    return [_Member(layers[split(n)[0]], split(n)[1], plan.modules[n].rank) for n in names]
