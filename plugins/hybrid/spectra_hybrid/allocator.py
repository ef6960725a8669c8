"""Allocator ``spectrum-top``: the top fraction of each module type by score gets a LoRA."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spectra_core import AdapterPlan, Allocator, LoraInit, ModulePlan, Scores, StrategyOptions, TargetModule
from spectra_core.errors import ConfigError, InputError
from spectra_core.spectral.types import layer_count, layer_index

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
        lora_init: LoraInit = Field(default_factory=LoraInit, description="How the LoRA weights start: "
                                    "default, eva (peft EVA from training data), loftq (peft LoftQ, 4-bit base).")
        backward_layers: int | None = Field(
            default=None, gt=0, description="Depth budget: choose only among the last N layers, so backward stops "
            "there (cheaper steps); each type still trains floor(n × top_fraction) modules.")

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
        chosen = top_per_type([by_name[t.name] for t in targets], opts.top_fraction, self._eligible(targets))
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
        return AdapterPlan(allocator=self.name, mode=opts.mode, use_rslora=opts.use_rslora,
                           modules=modules, init=opts.lora_init)

    def _eligible(self, targets: list[TargetModule]) -> set[str] | None:
        """Targets in the last ``backward_layers`` layers (None: no depth budget)."""
        n = self.options.backward_layers
        if n is None:
            return None
        depth = layer_count(t.name for t in targets)
        if n > depth:
            raise ConfigError(f"allocator.options.backward_layers={n} exceeds the model's {depth} layers",
                              hint=f"use backward_layers ≤ {depth}, or leave it unset for no depth budget")
        return {t.name for t in targets if (i := layer_index(t.name)) is not None and i >= depth - n}
