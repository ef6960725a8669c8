"""Rebalancer ``snr-reselect``: re-score the effective weights and re-select the active modules."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from spectra_core import AdapterPlan, PlanChange, RescoringRebalancer
from spectra_core.errors import ConfigError
from spectra_core.strategies import TrainingSession

from .selection import top_per_type


class SnrReselect(RescoringRebalancer):
    """Re-score base + LoRA delta of every injected module; keep the same count per type active."""

    name = "snr-reselect"

    class Options(RescoringRebalancer.Options):
        on_deactivate: Literal["keep", "drop"] = Field(
            default="keep",
            description="keep: a deactivated module keeps its learned update, frozen; drop: zero it.")

    def check_plan(self, plan: AdapterPlan) -> None:
        if plan.mode != "all-inactive":
            raise ConfigError(f"rebalancer snr-reselect needs LoRA in every target module; the plan's mode is "
                              f"{plan.mode!r}", hint="set allocator.options.mode: all-inactive (method: hybrid does)")

    def rebalance(self, session: TrainingSession) -> list[PlanChange]:
        plan = session.plan
        self.check_plan(plan)
        names = [m.name for m in plan.injected()]
        scores = self.rescore(session, names)
        fraction_of_type: dict[str, float] = {}
        for t in {m.type for m in plan.modules.values()}:
            members = [m for m in plan.modules.values() if m.type == t]
            fraction_of_type[t] = sum(m.active for m in members) / len(members)
        chosen: set[str] = set()
        for t, fraction in fraction_of_type.items():
            if fraction > 0:
                chosen |= top_per_type([s for s in scores.modules if s.type == t], fraction)
        start = len(plan.history)
        lora = session.lora_modules()
        for s in scores.modules:
            entry = plan.modules[s.name]
            now_active = s.name in chosen
            reason = f"effective-weight {self.options.scorer} score {s.score:.4g} " + (
                "in" if now_active else "not in") + f" the top {fraction_of_type[s.type]:.0%} of {s.type}"
            plan.update(s.name, step=session.step, strategy=self.name, reason=reason,
                        active=now_active, score=s.score)
            if entry.active is False and self.options.on_deactivate == "drop":
                with torch.no_grad():
                    for b in lora[s.name].lora_B.values():
                        b.weight.zero_()
        session.apply_plan()
        return plan.history[start:]
