"""Scorer ``kappatune``: peft's KappaTune condition-number ranking (``peft.helpers.KappaTuneSelector``).

KappaTune adapts the modules with the lowest condition number σ_max/σ_min. peft ranks the ``nn.Linear``
modules of a model; here the weights of the scan are placed, under their own names, in a module tree of
``nn.Linear`` shells (no copy), peft ranks them, and the score is the position in peft's order:
``1 - i/n`` for the i-th best-conditioned (higher = better conditioned, as every spectra score). With
``peft-targets``' ``top_fraction: p`` the selection is exactly peft's ``get_best_targets(top_p=p)``.
All weights are held at once, as KappaTune on a loaded model does.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from spectra_core import ModuleScore, Scorer, Scores, StrategyOptions
from spectra_core.spectral.types import module_type
from spectra_core.strategies import WeightSource


def linear_tree(weights: list[tuple[str, torch.Tensor]]) -> torch.nn.Module:
    """A module tree with an ``nn.Linear`` holding each weight at its dotted name."""
    root = torch.nn.Module()
    for name, w in weights:
        *parents, leaf = name.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        linear.weight = torch.nn.Parameter(w.float(), requires_grad=False)
        node.add_module(leaf, linear)
    return root


class KappaTuneScorer(Scorer):
    """KappaTune (peft): rank modules by condition number, best-conditioned first."""

    name = "kappatune"

    class Options(StrategyOptions):
        max_dim_size_to_analyze: int = Field(
            default=16384, gt=0, description="peft skips matrices with a larger dimension (they score NaN).")

    def score(self, weights: WeightSource) -> Scores:
        from peft.helpers import KappaTuneSelector

        held = [(name, w) for name, w in weights]
        selector = KappaTuneSelector(linear_tree(held), max_dim_size_to_analyze=self.options.max_dim_size_to_analyze,
                                     show_progress=False)
        order = selector.get_best_targets()
        position = {name: i for i, name in enumerate(order)}
        modules = [ModuleScore(name=name, type=module_type(name), shape=tuple(w.shape),
                               score=1 - position[name] / len(held) if name in position else math.nan)
                   for name, w in held]
        return Scores(scorer=self.name, options=self.options.model_dump(),
                      fingerprint=getattr(weights, "fingerprint", None), modules=modules)
