"""Allocator ``example-every-other``: a LoRA on every other layer (by score order within each type)."""

from __future__ import annotations

from pydantic import Field

from spectra_core import AdapterPlan, Allocator, ModulePlan, Scores, StrategyOptions, TargetModule


class EveryOtherLayer(Allocator):
    """Within each type, modules ranked by score: the 1st, 3rd, 5th, ... train a LoRA of one rank."""

    name = "example-every-other"

    class Options(StrategyOptions):
        rank: int = Field(default=4, gt=0)
        alpha: float = Field(default=8.0, gt=0)

    def allocate(self, scores: Scores, targets: list[TargetModule]) -> AdapterPlan:
        by_name = scores.by_name()
        chosen: set[str] = set()
        for t in {t.type for t in targets}:
            ranked = sorted((x for x in targets if x.type == t), key=lambda x: by_name[x.name].score, reverse=True)
            chosen |= {x.name for x in ranked[::2]}
        modules = {t.name: ModulePlan(name=t.name, type=t.type, shape=(t.out_features, t.in_features),
                                      active=t.name in chosen, rank=self.options.rank if t.name in chosen else 0,
                                      alpha=self.options.alpha, score=by_name[t.name].score) for t in targets}
        return AdapterPlan(allocator=self.name, modules=modules)
