"""Rebalancer ``alors-resize``: re-score effective weights, move modules between tiers, resize their LoRA."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field

from spectra_core import PlanChange, RescoringRebalancer
from spectra_core.errors import ConfigError
from spectra_core.plan import AdapterPlan, ModulePlan
from spectra_core.scores import ModuleScore
from spectra_core.strategies import TrainingSession

from .resize import energy_rank, is_float_base, resize_lora, sync_peft_config, update_spectrum
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


class AlorsResize(RescoringRebalancer):
    """Re-score base + BA of each adapted module; move modules between tiers, resizing their LoRA."""

    name = "alors-resize"

    class Options(RescoringRebalancer.Options):
        on_demote: Literal["keep", "merge"] = Field(
            default="keep", description="A module moved to a frozen tier keeps its update as a frozen LoRA "
            "(keep), or has it merged into the base weight (merge; exact on a float base only, on a 4-bit base "
            "it stays a frozen LoRA). A merged module's LoRA is still saved, so the adapter stays complete.")
        seed: int = Field(default=0, description="Seed of the new rows of A when a LoRA grows.")

    def check_plan(self, plan: AdapterPlan) -> None:
        if not any(m.tier for m in plan.modules.values()):
            raise ConfigError(f"rebalancer alors-resize moves modules between ALoRS tiers, but the plan from "
                              f"allocator {plan.allocator!r} has no tiers",
                              hint="use allocator alors-tiers (method: alors)")

    def rebalance(self, session: TrainingSession) -> list[PlanChange]:
        plan, lora = session.plan, session.lora_modules()
        specs = {s.name: s for s in tier_specs(plan)}
        order = list(specs)
        movable = [m for m in plan.modules.values()
                   if m.tier in specs and m.name in lora and not lora[m.name].merged]
        scores = self.rescore(session, [m.name for m in movable])
        target = _retier(scores.modules, {m.name: m.tier for m in movable}, order)
        start = len(plan.history)
        generator = torch.Generator().manual_seed(self.options.seed + session.step)
        for s in scores.modules:
            entry, layer, spec = plan.modules[s.name], lora[s.name], specs[target[s.name]]
            needed = energy_rank(update_spectrum(layer), 0.9)
            reason = (f"effective-weight {self.options.scorer} score {s.score:.4g}: tier {spec.name} of {s.type}; "
                      + (f"update BA has 90 % of its energy in {needed} of {entry.rank} directions" if needed
                         else "update BA is zero"))
            fields: dict[str, Any] = {"score": s.score, "tier": spec.name, "active": spec.active}
            if spec.name == entry.tier:
                reason += "; stays"
            elif spec.active:
                fields |= {"rank": spec.rank, "alpha": spec.alpha, "lr_scale": spec.lr_scale}
                if (spec.rank, spec.alpha) != (entry.rank, entry.alpha):
                    done = resize_lora(layer, spec.rank, spec.alpha, use_rslora=plan.use_rslora,
                                       optimizer=session.optimizer, generator=generator)
                    reason += (f"; rank {done.old_rank} -> {done.new_rank} by "
                               + ("zero-padding B (update unchanged)" if done.new_rank >= done.old_rank else
                                  f"truncated SVD of BA, {done.energy_kept:.1%} of its energy kept"))
            elif entry.active:
                reason += "; " + self._freeze(layer)
            plan.update(s.name, step=session.step, strategy=self.name, reason=reason, **fields)
        sync_peft_config(session.model, plan)
        session.apply_plan()
        return plan.history[start:]

    def _freeze(self, layer: torch.nn.Module) -> str:
        if self.options.on_demote == "keep":
            return "frozen; its update stays as a frozen LoRA"
        if not is_float_base(layer):
            return ("frozen; kept as a frozen LoRA: merging into a 4-bit base would requantize it "
                    "(on_demote: merge is exact on a float base only)")
        layer.merge(adapter_names=["default"])
        return "frozen; update merged into the float base weight (the LoRA is still saved in the adapter)"


def _retier(scores: list[ModuleScore], current: dict[str, str], order: list[str]) -> dict[str, str]:
    """New tier per module: within each type, best scores fill the tiers top-down with today's counts."""
    out: dict[str, str] = {}
    for members in ranked_by_type(scores).values():
        counts = Counter(current[m.name] for m in members)
        slots = [tier for tier in order for _ in range(counts[tier])]
        out.update((m.name, tier) for m, tier in zip(members, slots))
    return out
