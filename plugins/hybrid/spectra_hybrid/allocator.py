"""Allocator ``spectrum-top``: the top fraction of each module type by score gets a LoRA."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spectra_core import AdapterPlan, Allocator, ModulePlan, Scores, StrategyOptions, TargetModule
from spectra_core.errors import ConfigError, InputError

from .selection import top_per_type


class SpectrumTopAllocator(Allocator):
    """Top fraction of modules per type by score train a LoRA of one rank; the rest stay frozen."""

    name = "spectrum-top"

    class Options(StrategyOptions):
        top_fraction: float = Field(default=0.25, gt=0, le=1, description="Fraction of each type to adapt.")
        rank: int = Field(default=16, gt=0)
        alpha: float = Field(default=32, gt=0)
        mode: Literal["targeted", "all-inactive"] = Field(
            default="targeted", description="targeted: LoRA only where active; all-inactive: LoRA in every "
            "target, frozen where inactive, so a rebalancer can switch modules on and off.")
        use_rslora: bool = False
        lr_scale: float = Field(default=1.0, gt=0)

    def allocate(self, scores: Scores, targets: list[TargetModule]) -> AdapterPlan:
        by_name = scores.by_name()
        missing = [t.name for t in targets if t.name not in by_name]
        if missing:
            raise InputError(f"{len(missing)} target modules have no score (e.g. {missing[0]})",
                             hint="re-run the scan for this model; scores from another checkpoint do not apply")
        opts = self.options
        for t in targets:
            if opts.rank > min(t.in_features, t.out_features):
                raise ConfigError(
                    f"allocator.options.rank={opts.rank} exceeds the smaller dimension of {t.name} "
                    f"({t.out_features}×{t.in_features})",
                    hint=f"use rank ≤ {min(t.in_features, t.out_features)} or exclude that module in targets")
        chosen = top_per_type([by_name[t.name] for t in targets], opts.top_fraction)
        modules = {
            t.name: ModulePlan(name=t.name, type=t.type, shape=(t.out_features, t.in_features),
                               active=t.name in chosen, rank=opts.rank, alpha=opts.alpha,
                               lr_scale=opts.lr_scale, score=by_name[t.name].score)
            for t in targets
        }
        if opts.mode == "targeted":
            for m in modules.values():
                if not m.active:
                    m.rank = 0
        return AdapterPlan(allocator=self.name, mode=opts.mode, use_rslora=opts.use_rslora, modules=modules)
