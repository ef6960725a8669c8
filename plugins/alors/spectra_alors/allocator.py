"""Allocator ``alors-tiers``: each module type's modules fall into SNR tiers; each tier has a rank,
alpha and LR multiplier (optionally solved to a trainable-parameter budget)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from spectra_core import AdapterPlan, Allocator, ModulePlan, Scores, StrategyOptions, TargetModule
from spectra_core.errors import InputError

from .budget import solve_ranks, uniform_budget
from .tiers import Tier, TieredOptions, assign


class AlorsTiers(Allocator):
    """SNR tiers per module type (e.g. top 25 % rank 16, next 25 % rank 4, rest frozen), rsLoRA scaling."""

    name = "alors-tiers"

    class Options(StrategyOptions, TieredOptions):
        use_rslora: bool = Field(default=True, description="Scale by alpha/sqrt(r); with alpha/r a high tier is "
                                                           "silently scaled down.")
        mode: Literal["targeted", "all-inactive"] = Field(
            default="all-inactive",
            description="all-inactive: frozen-tier modules carry a frozen LoRA of the smallest trainable rank, so "
                        "a rebalancer can promote them; targeted: no LoRA on frozen tiers.")
        budget: int | None = Field(default=None, gt=0, description="Trainable LoRA parameters to allocate; the "
                                   "tier ranks are solved to land within 1 % of it (tier ranks give the ratios).")
        budget_uniform_rank: int | None = Field(
            default=None, gt=0, description="Budget = the parameters of a uniform LoRA of this rank on every target.")

        @model_validator(mode="after")
        def _one_budget(self):
            if self.budget is not None and self.budget_uniform_rank is not None:
                raise ValueError("give either budget or budget_uniform_rank, not both")
            return self

    def allocate(self, scores: Scores, targets: list[TargetModule]) -> AdapterPlan:
        opts = self.options
        by_name = scores.by_name()
        missing = [t.name for t in targets if t.name not in by_name]
        if missing:
            raise InputError(f"{len(missing)} target modules have no score (e.g. {missing[0]})",
                             hint="re-run the scan for this model; scores from another checkpoint do not apply")
        if not targets:
            raise InputError("no target modules to allocate", hint="check targets.include / targets.exclude")
        cap = min(min(t.in_features, t.out_features) for t in targets)
        smallest = min(targets, key=lambda t: min(t.in_features, t.out_features))
        budget = opts.budget or (uniform_budget(targets, opts.budget_uniform_rank)
                                 if opts.budget_uniform_rank else None)
        for tier in opts.tiers if budget is None else ():
            if tier.rank > cap:
                raise InputError(
                    f"tier {tier.name!r} has rank {tier.rank}, larger than {smallest.name} allows "
                    f"({smallest.out_features}×{smallest.in_features}: rank ≤ {cap}); any module may be moved "
                    "into any tier, so every tier rank must fit every target",
                    hint=f"use tier ranks ≤ {cap} or exclude the small modules in targets")
        tier_of = assign([by_name[t.name] for t in targets], opts.tiers, opts.by)
        ranks = {t.name: tier_of[t.name].rank for t in targets}
        if budget is not None:
            members = {tier.name: [t for t in targets if tier_of[t.name] is tier] for tier in opts.tiers}
            ranks.update(solve_ranks(members, opts.tiers, budget, cap))
        trained = [r for t in targets if (r := ranks[t.name]) > 0]
        park = min(trained) if opts.mode == "all-inactive" and trained else 0
        park_alpha = next((self._alpha(tier, park) for tier in reversed(opts.tiers) if tier.rank), 0.0)
        modules = {}
        for t in targets:
            tier = tier_of[t.name]
            rank = ranks[t.name] or park
            modules[t.name] = ModulePlan(
                name=t.name, type=t.type, shape=(t.out_features, t.in_features), active=not tier.frozen,
                rank=rank, alpha=self._alpha(tier, rank) if not tier.frozen else (park_alpha if rank else 0.0),
                lr_scale=tier.lr_scale, tier=tier.name, score=by_name[t.name].score)
        return AdapterPlan(allocator=self.name, mode=opts.mode, use_rslora=opts.use_rslora, modules=modules)

    def _alpha(self, tier: Tier, rank: int) -> float:
        """Alpha keeping the tier's configured scale factor at ``rank`` (its own alpha at its own rank)."""
        if rank == tier.rank or not rank:
            return tier.alpha
        scale = tier.scaling(self.options.use_rslora)
        return scale * (math.sqrt(rank) if self.options.use_rslora else rank)
