"""Tiers: named score bands, each with a LoRA rank, alpha and LR multiplier.

Tiers are listed from the highest to the lowest. A tier holds either a band of each module type's
score ranking (``quantile: [from, to]``, 0 = best) or an absolute score band (``score: [low, high]``,
``null`` = unbounded). The bands must tile the whole range without overlap or gap, and ranks must
strictly decrease from one tier to the next (rank 0 = frozen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spectra_core.scores import ModuleScore

By = Literal["quantile", "score"]
EPS = 1e-9


class Tier(BaseModel):
    """One tier: its band and the LoRA it gives to the modules in it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    quantile: tuple[float, float] | None = Field(
        default=None, description="[from, to): band of each type's ranking, best first (0 = top, 1 = bottom).")
    score: tuple[float | None, float | None] | None = Field(
        default=None, description="[low, high): absolute score band; null = unbounded.")
    rank: int = Field(ge=0, description="LoRA rank; 0 = frozen (no trainable LoRA).")
    alpha: float = Field(default=0.0, ge=0, description="LoRA alpha (scale alpha/sqrt(rank) with rsLoRA).")
    lr_scale: float = Field(default=1.0, gt=0, description="Multiplier of training.learning_rate.")

    @property
    def frozen(self) -> bool:
        return self.rank == 0

    def scaling(self, use_rslora: bool) -> float:
        """The LoRA scale factor this tier's rank and alpha give."""
        return self.alpha / (math.sqrt(self.rank) if use_rslora else self.rank) if self.rank else 0.0


DEFAULT_TIERS = [
    Tier(name="high", quantile=(0.0, 0.25), rank=16, alpha=8.0),
    Tier(name="medium", quantile=(0.25, 0.5), rank=4, alpha=4.0),
    Tier(name="low", quantile=(0.5, 1.0), rank=0),
]


def _fmt(v: float | None) -> str:
    return "null" if v is None else f"{v:g}"


def check_tiers(tiers: Sequence[Tier], by: By) -> None:
    """Raise ValueError unless the tiers' bands tile the range and their ranks strictly decrease."""
    if not tiers:
        raise ValueError("at least one tier is needed")
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise ValueError(f"tier names must be unique, got {names}")
    if all(t.frozen for t in tiers):
        raise ValueError("every tier has rank 0: nothing would train")
    for t in tiers:
        if t.rank and t.alpha <= 0:
            raise ValueError(f"tier {t.name!r}: rank {t.rank} needs alpha > 0")
        if (t.quantile if by == "quantile" else t.score) is None:
            raise ValueError(f"tier {t.name!r} has no {by!r} band (by: {by} needs one on every tier)")
        if (t.score if by == "quantile" else t.quantile) is not None:
            raise ValueError(f"tier {t.name!r}: by: {by} takes {by!r} bands only")
    for hi, lo in zip(tiers, tiers[1:]):
        if lo.rank >= hi.rank:
            raise ValueError(f"ranks must strictly decrease from the highest tier down: tier {hi.name!r} has "
                             f"rank {hi.rank}, the next tier {lo.name!r} rank {lo.rank}")
    (_check_quantiles if by == "quantile" else _check_scores)(tiers)


def _check_quantiles(tiers: Sequence[Tier]) -> None:
    for t in tiers:
        a, b = t.quantile
        if not 0 <= a < b <= 1:
            raise ValueError(f"tier {t.name!r}: quantile [{a:g}, {b:g}] must satisfy 0 <= from < to <= 1")
    first, last = tiers[0].quantile, tiers[-1].quantile
    if first[0] > EPS:
        raise ValueError(f"tier {tiers[0].name!r} starts at quantile {first[0]:g}: the top of the ranking "
                         f"[0, {first[0]:g}) belongs to no tier (a gap); start the first tier at 0")
    if last[1] < 1 - EPS:
        raise ValueError(f"tier {tiers[-1].name!r} ends at quantile {last[1]:g}: [{last[1]:g}, 1] belongs to "
                         "no tier (a gap); end the last tier at 1")
    for hi, lo in zip(tiers, tiers[1:]):
        end, start = hi.quantile[1], lo.quantile[0]
        if start < end - EPS:
            raise ValueError(f"tiers {hi.name!r} and {lo.name!r} overlap on quantiles [{start:g}, {end:g}]")
        if start > end + EPS:
            raise ValueError(f"quantiles [{end:g}, {start:g}) between tiers {hi.name!r} and {lo.name!r} belong "
                             "to no tier (a gap)")


def _check_scores(tiers: Sequence[Tier]) -> None:
    for t in tiers:
        low, high = t.score
        if low is not None and high is not None and not low < high:
            raise ValueError(f"tier {t.name!r}: score band [{low:g}, {high:g}) is empty; low must be < high")
    if tiers[0].score[1] is not None:
        raise ValueError(f"tier {tiers[0].name!r} ends at score {tiers[0].score[1]:g}: higher scores belong to "
                         "no tier (a gap); set the first tier's upper bound to null")
    if tiers[-1].score[0] is not None:
        raise ValueError(f"tier {tiers[-1].name!r} starts at score {tiers[-1].score[0]:g}: lower scores belong "
                         "to no tier (a gap); set the last tier's lower bound to null")
    for hi, lo in zip(tiers, tiers[1:]):
        bottom, top = hi.score[0], lo.score[1]
        if bottom is None or top is None:
            raise ValueError(f"tiers {hi.name!r} and {lo.name!r} overlap (an unbounded end between them)")
        if top > bottom:
            raise ValueError(f"tiers {hi.name!r} and {lo.name!r} overlap on scores [{bottom:g}, {top:g})")
        if top < bottom:
            raise ValueError(f"scores [{top:g}, {bottom:g}) between tiers {hi.name!r} and {lo.name!r} belong "
                             "to no tier (a gap)")


class TieredOptions(BaseModel):
    """Mixin validated with every options model that carries tiers."""

    by: By = Field(default="quantile", description="quantile: bands of each type's ranking; score: absolute bands.")
    tiers: list[Tier] = Field(default_factory=lambda: [t.model_copy() for t in DEFAULT_TIERS],
                              description="Tiers from the highest to the lowest.")

    @model_validator(mode="after")
    def _valid_tiers(self) -> TieredOptions:
        check_tiers(self.tiers, self.by)
        return self


def _key(m: ModuleScore) -> float:
    return -math.inf if math.isnan(m.score) else m.score


def ranked_by_type(modules: Sequence[ModuleScore]) -> dict[str, list[ModuleScore]]:
    """Each type's modules, best score first (stable: ties keep the given order; NaN last)."""
    by_type: dict[str, list[ModuleScore]] = {}
    for m in modules:
        by_type.setdefault(m.type, []).append(m)
    return {t: sorted(ms, key=_key, reverse=True) for t, ms in by_type.items()}


def assign(modules: Sequence[ModuleScore], tiers: Sequence[Tier], by: By) -> dict[str, Tier]:
    """Module name → its tier. Quantile bands: positions ``floor(from·n) ≤ i < floor(to·n)`` of each
    type's ranking of ``n`` modules. Score bands: ``low ≤ score < high``; NaN goes to the last tier."""
    out: dict[str, Tier] = {}
    if by == "quantile":
        for ranked in ranked_by_type(modules).values():
            n = len(ranked)
            for t in tiers:
                start, stop = (math.floor(q * n + EPS) for q in t.quantile)
                out.update((m.name, t) for m in ranked[start:stop])
        return out
    for m in modules:
        out[m.name] = next((t for t in tiers if _in_band(m.score, t.score)), tiers[-1])
    return out


def _in_band(score: float, band: tuple[float | None, float | None]) -> bool:
    low, high = band
    return not math.isnan(score) and (low is None or score >= low) and (high is None or score < high)
