"""Selecting modules from scores: the reference's per-type top-percent rule and a LoRA-target view."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from spectra_core.errors import InputError
from spectra_core.scores import ModuleScore, Scores
from spectra_core.spectral.types import layer_index

Selection = dict[str, list[ModuleScore]]  # type -> selected modules, best first


def check_percent(percent: float) -> float:
    """Percent must be in 1..100 (the reference's integer-percent range, fractions allowed)."""
    if not (isinstance(percent, (int, float)) and math.isfinite(percent) and 1 <= percent <= 100):
        raise InputError(f"--top-percent must be between 1 and 100, got {percent}",
                         hint="e.g. --top-percent 50 keeps the best half of every module type")
    return percent


def top_percent(scores: Scores, percent: float) -> Selection:
    """Per type (in order of first appearance): stable sort by score, descending; keep floor(len·P/100).

    Python's stable ``sorted(..., reverse=True)`` is exactly what the reference does, so ties (and
    NaN) keep file order.
    """
    check_percent(percent)
    selection: Selection = {}
    for type_ in scores.types():
        members = [m for m in scores.modules if m.type == type_]
        k = len(members) * int(percent) // 100 if float(percent).is_integer() else math.floor(len(members) * percent / 100)
        selection[type_] = sorted(members, key=lambda m: m.score, reverse=True)[:k]
    return selection


def reference_order(scores: Scores) -> Scores:
    """Modules sorted the way the reference tool writes its files: by type name, then scan order."""
    modules = sorted(scores.modules, key=lambda m: m.type)
    return scores.model_copy(update={"modules": modules})


def selected_names(selection: Selection) -> list[str]:
    return [m.name for members in selection.values() for m in members]


def is_linear_candidate(m: ModuleScore) -> bool:
    """Heuristic for file-based scans: a 2-D weight that is not a norm, an embedding or an expert slice."""
    last = m.name.rsplit(".", 1)[-1]
    return (m.shape is not None and min(m.shape) >= 2 and "norm" not in m.type
            and not re.search(r"(embed|wte|wpe)", m.name) and not last.isdigit())


def lora_targets(selection: Selection, linear_names: Iterable[str] | None = None) -> list[str]:
    """Selected modules peft can adapt with LoRA: in ``linear_names`` when given, else by heuristic."""
    allowed = set(linear_names) if linear_names is not None else None
    return [m.name for members in selection.values() for m in members
            if (m.name in allowed if allowed is not None else is_linear_candidate(m))]


def lora_target_regex(names: Iterable[str]) -> str:
    """One regex peft's ``target_modules`` accepts (full match on module names, peft prefix allowed)."""
    alternatives = "|".join(re.escape(n) for n in names)
    return rf"(.*\.)?({alternatives})" if alternatives else r"(?!)"


def layer_grid(scores: Scores) -> tuple[list[int], list[str]]:
    """Layer indices and per-layer types present (for heatmaps): modules without a layer are left out."""
    layers = sorted({i for m in scores.modules if (i := layer_index(m.name)) is not None})
    types = list(dict.fromkeys(m.type for m in scores.modules if layer_index(m.name) is not None))
    return layers, types
