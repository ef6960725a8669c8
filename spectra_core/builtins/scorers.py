"""Built-in scorers."""

from __future__ import annotations

import hashlib

from pydantic import Field

from spectra_core.scores import ModuleScore, Scores
from spectra_core.spectral.types import module_type
from spectra_core.strategies import Scorer, StrategyOptions, WeightSource


class RandomScorer(Scorer):
    """A seeded random score per module: the honest baseline every SNR selection must beat."""

    name = "random"

    class Options(StrategyOptions):
        seed: int = Field(default=0, description="Same seed, same scores for the same module names.")

    def score(self, weights: WeightSource) -> Scores:
        modules = []
        for name, w in weights:
            digest = hashlib.sha256(f"{self.options.seed}:{name}".encode()).digest()
            modules.append(ModuleScore(name=name, type=module_type(name),
                                       score=int.from_bytes(digest[:8], "big") / 2**64, shape=tuple(w.shape)))
        return Scores(scorer=self.name, options=self.options.model_dump(),
                      fingerprint=getattr(weights, "fingerprint", None), modules=modules)


SCORERS = [RandomScorer]
