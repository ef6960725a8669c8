"""Top-fraction selection per module type, as the Spectrum reference selects."""

from __future__ import annotations

import math

from spectra_core.errors import ConfigError
from spectra_core.scores import ModuleScore


def _key(m: ModuleScore) -> float:
    return -math.inf if math.isnan(m.score) else m.score


def top_per_type(modules: list[ModuleScore], fraction: float, eligible: set[str] | None = None) -> set[str]:
    """Names of the top ``floor(n × fraction)`` modules of each type (stable: ties keep layer order).

    NaN scores rank last. At least one module per type is kept when the type has any. With
    ``eligible``, the count still comes from all ``n`` modules of the type but only eligible ones are
    chosen (a type with fewer eligible modules than its count is an error).
    """
    by_type: dict[str, list[ModuleScore]] = {}
    for m in modules:
        by_type.setdefault(m.type, []).append(m)
    chosen: set[str] = set()
    for type_, members in by_type.items():
        k = max(1, math.floor(len(members) * fraction))
        pool = members if eligible is None else [m for m in members if m.name in eligible]
        if len(pool) < k:
            raise ConfigError(f"{type_}: {k} modules of {len(members)} should train (top_fraction={fraction}), "
                              f"but only {len(pool)} are in the eligible layers",
                              hint="raise allocator.options.backward_layers or lower top_fraction")
        chosen.update(m.name for m in sorted(pool, key=_key, reverse=True)[:k])
    return chosen
