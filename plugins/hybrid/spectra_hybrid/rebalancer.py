"""Rebalancer ``snr-reselect``: re-score the effective weights and re-select the active modules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spectra_core import AdapterPlan, Change, RescoringRebalancer, TrainingSession, activate, annotate, deactivate
from spectra_core.errors import ConfigError

from .selection import top_per_type


class SnrReselect(RescoringRebalancer):
    """Re-score base + LoRA delta of every injected module; keep the same count per type active."""

    name = "snr-reselect"

    class Options(RescoringRebalancer.Options):
        on_deactivate: Literal["keep", "drop"] = Field(
            default="keep",
            description="keep: a deactivated module keeps its learned update, frozen; drop: zero it "
                        "(refused with lora_init loftq, whose B holds the 4-bit error correction).")

    def check_plan(self, plan: AdapterPlan) -> None:
        if plan.mode != "all-inactive":
            raise ConfigError(f"rebalancer snr-reselect needs LoRA in every target module; the plan's mode is "
                              f"{plan.mode!r}", hint="set allocator.options.mode: all-inactive (method: hybrid does)")
        if self.options.on_deactivate == "drop" and plan.init.name == "loftq":
            raise ConfigError("rebalancer snr-reselect with on_deactivate 'drop' would zero the LoftQ correction of "
                              "every module it deactivates (the plan's lora_init is loftq)",
                              hint="set rebalancer.options.on_deactivate: keep")

    def rebalance(self, session: TrainingSession) -> list[Change]:
        plan = session.plan
        self.check_plan(plan)
        scores = self.rescore(session, [m.name for m in plan.injected()])
        fraction_of_type: dict[str, float] = {}
        for t in {m.type for m in plan.modules.values()}:
            members = [m for m in plan.modules.values() if m.type == t]
            fraction_of_type[t] = sum(m.active for m in members) / len(members)
        chosen: set[str] = set()
        for t, fraction in fraction_of_type.items():
            if fraction > 0:
                chosen |= top_per_type([s for s in scores.modules if s.type == t], fraction)
        changes: list[Change] = []
        for s in scores.modules:
            now_active = s.name in chosen
            reason = f"effective-weight {self.scorer.name} score {s.score:.4g} " + (
                "in" if now_active else "not in") + f" the top {fraction_of_type[s.type]:.0%} of {s.type}"
            if now_active == plan.modules[s.name].active:
                changes.append(annotate(s.name, reason, score=s.score))
            elif now_active:
                changes.append(activate(s.name, reason, score=s.score))
            else:
                changes.append(deactivate(s.name, reason, on_deactivate=self.options.on_deactivate, score=s.score))
        return changes
