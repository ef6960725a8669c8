"""Top-fraction selection per module type, as the Spectrum reference selects."""

from __future__ import annotations

import math

from spectra_core.scores import ModuleScore


def _key(m: ModuleScore) -> float:
    return -math.inf if math.isnan(m.score) else m.score


def top_per_type(modules: list[ModuleScore], fraction: float) -> set[str]:
    """Names of the top ``floor(n × fraction)`` modules of each type (stable: ties keep layer order).

    NaN scores rank last. At least one module per type is kept when the type has any.
    """
    by_type: dict[str, list[ModuleScore]] = {}
    for m in modules:
        by_type.setdefault(m.type, []).append(m)
    chosen: set[str] = set()
    for members in by_type.values():
        k = max(1, math.floor(len(members) * fraction))
        chosen.update(m.name for m in sorted(members, key=_key, reverse=True)[:k])
    return chosen
