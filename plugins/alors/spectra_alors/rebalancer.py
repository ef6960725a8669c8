"""Rebalancer ``alors-resize``: re-score effective weights, move modules between tiers, resize their LoRA."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from spectra_core import (
    AdapterPlan,
    Change,
    ModuleChange,
    ModulePlan,
    ModuleScore,
    RescoringRebalancer,
    TrainingSession,
    annotate,
    deactivate,
)
from spectra_core.errors import ConfigError

from .tiers import ranked_by_type


@dataclass(frozen=True)
class TierSpec:
    """A tier as the plan realises it: trained or frozen, and (if trained) its rank, alpha, LR scale."""

    name: str
    active: bool
    rank: int
    alpha: float
    lr_scale: float


def tier_specs(plan: AdapterPlan) -> list[TierSpec]:
    """The plan's tiers, highest first: each trained tier's most common (rank, alpha, lr_scale)."""
    by_tier: dict[str, list[ModulePlan]] = {}
    for m in plan.modules.values():
        if m.tier is not None:
            by_tier.setdefault(m.tier, []).append(m)
    specs = []
    for name, members in by_tier.items():
        trained = [(m.rank, m.alpha, m.lr_scale) for m in members if m.active]
        if trained:
            rank, alpha, lr = Counter(trained).most_common(1)[0][0]
            specs.append(TierSpec(name, True, rank, alpha, lr))
        else:
            specs.append(TierSpec(name, False, 0, 0.0, members[0].lr_scale))
    return sorted(specs, key=lambda s: (s.active, s.rank), reverse=True)


def energy_rank(spectrum: torch.Tensor, fraction: float) -> int:
    """Fewest singular values keeping ``fraction`` of the energy (0 for a zero update)."""
    energy = spectrum.double() ** 2
    if float(energy.sum()) == 0.0:
        return 0
    share = torch.cumsum(energy, 0) / energy.sum()
    return int(torch.searchsorted(share, share.new_tensor(fraction - 1e-12))) + 1  # same device (CUDA)


class AlorsResize(RescoringRebalancer):
    """Re-score base + BA of each adapted module; move modules between tiers, resizing their LoRA."""

    name = "alors-resize"

    class Options(RescoringRebalancer.Options):
        on_demote: Literal["keep", "merge"] = Field(
            default="keep", description="A module moved to a frozen tier keeps its update as a frozen LoRA "
            "(keep), or has it merged into the base weight (merge; exact on a float base only, on a 4-bit base "
            "it stays a frozen LoRA). A merged module's LoRA is still saved, so the adapter stays complete.")

    def check_plan(self, plan: AdapterPlan) -> None:
        if not any(m.tier for m in plan.modules.values()):
            raise ConfigError(f"rebalancer alors-resize moves modules between ALoRS tiers, but the plan from "
                              f"allocator {plan.allocator!r} has no tiers",
                              hint="use allocator alors-tiers (method: alors)")

    def rebalance(self, session: TrainingSession) -> list[Change]:
        """Within each type, the best effective-weight scores fill the tiers top-down with today's counts;
        a module that changes tier takes that tier's rank, alpha and LR scale (the core resizes its LoRA)."""
        plan, handles = session.plan, session.adapters()
        specs = {s.name: s for s in tier_specs(plan)}
        movable = [m for m in plan.modules.values() if m.tier in specs and m.name in handles
                   and not handles[m.name].merged]
        scores = self.rescore(session, [m.name for m in movable])
        target = _retier(scores.modules, {m.name: m.tier for m in movable}, list(specs))
        changes: list[Change] = []
        for s in scores.modules:
            entry, spec = plan.modules[s.name], specs[target[s.name]]
            needed = energy_rank(handles[s.name].singular_values(), 0.9)
            reason = (f"effective-weight {self.scorer.name} score {s.score:.4g}: tier {spec.name} of {s.type}; "
                      + (f"update BA has 90 % of its energy in {needed} of {entry.rank} directions" if needed
                         else "update BA is zero"))
            fields = {"score": s.score, "tier": spec.name}
            if spec.name == entry.tier:
                changes.append(annotate(s.name, reason + "; stays", **fields))
            elif spec.active:
                changes.append(ModuleChange(module=s.name, reason=reason, active=True, rank=spec.rank,
                                            alpha=spec.alpha, lr_scale=spec.lr_scale, **fields))
            elif entry.active:
                changes.append(deactivate(s.name, reason, on_deactivate=self.options.on_demote, **fields))
            else:
                changes.append(annotate(s.name, reason, **fields))
        return changes


def _retier(scores: list[ModuleScore], current: dict[str, str], order: list[str]) -> dict[str, str]:
    """New tier per module: within each type, best scores fill the tiers top-down with today's counts."""
    out: dict[str, str] = {}
    for members in ranked_by_type(scores).values():
        counts = Counter(current[m.name] for m in members)
        slots = [tier for tier in order for _ in range(counts[tier])]
        out.update((m.name, tier) for m, tier in zip(members, slots))
    return out
