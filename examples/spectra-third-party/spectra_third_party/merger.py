"""Gradient merger ``example-adjacent-pairs``: neighbouring same-type modules whose gradients agree
share one LoRA, and a group trains on the mean of its members' gradients instead of their sum."""

from __future__ import annotations

import torch
from pydantic import Field

from spectra_core import Change, GradientMerger, GroupGradients, StrategyOptions, Tie, TrainingSession


class AdjacentPairs(GradientMerger):
    """Pairs consecutive active modules of one type and shape when their gradient cosine ≥ threshold."""

    name = "example-adjacent-pairs"

    class Options(StrategyOptions):
        threshold: float = Field(default=-1.0, ge=-1, le=1, description="Minimum gradient cosine to pair.")
        max_groups: int = Field(default=2, gt=0)

    def calibrate(self, session: TrainingSession) -> list[Change]:
        active = [m for m in session.plan.active() if m.rank > 0]
        signals = session.gradient_signals([m.name for m in active], batches=1, dim=16, seed=0)
        changes: list[Change] = []
        for t in sorted({m.type for m in active}):
            members = [m for m in active if m.type == t]
            for a, b in zip(members[::2], members[1::2]):
                cosine = float(torch.nn.functional.cosine_similarity(signals[a.name].flatten(),
                                                                     signals[b.name].flatten(), dim=0))
                if a.shape == b.shape and cosine >= self.options.threshold and len(changes) < self.options.max_groups:
                    changes.append(Tie(group=f"pair{len(changes)}", modules=[a.name, b.name],
                                       reason=f"neighbours of type {t}, gradient cosine {cosine:.3f}"))
        return changes

    def merge_gradients(self, session: TrainingSession, groups: list[GroupGradients]) -> dict[str, dict[str, torch.Tensor]]:
        return {g.group: {f: grad / len(g.members) for f, grad in g.summed.items()} for g in groups}
