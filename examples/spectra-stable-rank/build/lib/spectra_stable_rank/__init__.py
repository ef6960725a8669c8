"""An example plugin: one scorer, in one file, registered through the ``spectra`` entry point."""

from __future__ import annotations

import torch
from pydantic import Field

from spectra_core import ModuleScore, Scorer, Scores, StrategyOptions, hookimpl
from spectra_core.spectral.types import module_type


class StableRankScorer(Scorer):
    """Inverse stable rank ‖W‖₂² / ‖W‖_F²: high when a few directions carry the energy."""

    name = "stable-rank"

    class Options(StrategyOptions):
        power: float = Field(default=1.0, gt=0, description="Raise the score to this power.")

    def score(self, weights) -> Scores:
        modules = []
        for name, w in weights:
            w = w.float().reshape(w.shape[0], -1) if w.dim() > 1 else w.float()[None]
            frob2 = float(torch.linalg.matrix_norm(w, "fro") ** 2)
            spec2 = float(torch.linalg.matrix_norm(w, 2) ** 2)
            value = (spec2 / frob2) ** self.options.power if frob2 > 0 else 0.0
            modules.append(ModuleScore(name=name, type=module_type(name), score=value, shape=tuple(w.shape)))
        return Scores(scorer=self.name, options=self.options.model_dump(),
                      fingerprint=getattr(weights, "fingerprint", None), modules=modules)


@hookimpl
def spectra_scorers():
    return [StableRankScorer]
