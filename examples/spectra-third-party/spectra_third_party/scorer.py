"""Scorer ``example-rms``: the root-mean-square of each weight matrix."""

from __future__ import annotations

from spectra_core import ModuleScore, Scorer, Scores, WeightSource
from spectra_core.spectral.types import module_type


class RmsScorer(Scorer):
    """RMS of the weight entries; the source yields (name, float tensor) pairs, one at a time."""

    name = "example-rms"

    def score(self, weights: WeightSource) -> Scores:
        modules = [ModuleScore(name=name, type=module_type(name), score=float(w.float().pow(2).mean().sqrt()),
                               shape=tuple(w.shape)) for name, w in weights]
        return Scores(scorer=self.name, options=self.options.model_dump(), modules=modules,
                      fingerprint=getattr(weights, "fingerprint", None))
