"""Scorer ``kappatune``: peft's KappaTune condition-number ranking (``peft.helpers.KappaTuneSelector``).

KappaTune adapts the modules with the lowest condition number σ_max/σ_min. peft ranks the ``nn.Linear``
modules of a model; here peft ranks the scan's weights (``spectra_core.kappatune_order``), and the score is the position in peft's order:
``1 - i/n`` for the i-th best-conditioned (higher = better conditioned, as every spectra score). With
``peft-targets``' ``top_fraction: p`` the selection is exactly peft's ``get_best_targets(top_p=p)``.
All weights are held at once, as KappaTune on a loaded model does.
"""

from __future__ import annotations

import math

from pydantic import Field

from spectra_core import ModuleScore, Scorer, Scores, StrategyOptions, kappatune_order
from spectra_core.spectral.types import module_type
from spectra_core.strategies import WeightSource


class KappaTuneScorer(Scorer):
    """KappaTune (peft): rank modules by condition number, best-conditioned first."""

    name = "kappatune"

    class Options(StrategyOptions):
        max_dim_size_to_analyze: int = Field(
            default=16384, gt=0, description="peft skips matrices with a larger dimension (they score NaN).")

    def score(self, weights: WeightSource) -> Scores:
        held = [(name, w) for name, w in weights]
        order = kappatune_order(held, self.options.max_dim_size_to_analyze)
        position = {name: i for i, name in enumerate(order)}
        modules = [ModuleScore(name=name, type=module_type(name), shape=tuple(w.shape),
                               score=1 - position[name] / len(held) if name in position else math.nan)
                   for name, w in held]
        return Scores(scorer=self.name, options=self.options.model_dump(),
                      fingerprint=getattr(weights, "fingerprint", None), modules=modules)
