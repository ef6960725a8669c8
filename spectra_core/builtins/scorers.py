"""Built-in scorers: ``random`` (baseline), ``spectrum`` (the reference recipe), ``mp`` (Marchenko–Pastur)
and the data-aware ``grad-norm`` (:mod:`.gradnorm`)."""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import torch
from pydantic import Field

from spectra_core.errors import InputError
from spectra_core.scores import ModuleScore, Scores
from spectra_core.spectral.phases import phase
from spectra_core.spectral.slq import probe_seed, spectral_measure
from spectra_core.spectral.snr import batches, mp_snr, spectrum_snr, spectrum_snr_estimate
from spectra_core.spectral.spectra import Method, on_workers, one_thread, singular_values
from spectra_core.spectral.types import module_type
from spectra_core.strategies import Scorer, StrategyOptions, WeightSource

from .gradnorm import GradNormScorer


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


class SpectralScorer(Scorer):
    """Shared loop: check each matrix, compute spectra in shape batches, score, collect notes."""

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.notes: list[str] = []  # human-readable remarks about skipped or special modules

    def score(self, weights: WeightSource) -> Scores:
        self.notes = []
        modules: list[ModuleScore] = []
        for batch in batches(weights):
            with phase("check"), one_thread():
                results: list[float | None] = [self.check(name, w) for name, w in batch]
            todo = [i for i, r in enumerate(results) if r is None]
            approx = [i for i in todo if self.approximates(batch[i][1])]
            exact = [i for i in todo if i not in approx]
            for i, s in zip(exact, singular_values([batch[i][1] for i in exact], self.exact_method)):
                with phase("score"):
                    results[i] = self.formula(batch[i][0], s, tuple(batch[i][1].shape))
            if approx:
                for i, r in zip(approx, self.approximate([batch[i] for i in approx])):
                    results[i] = r
            for (name, w), r in zip(batch, results):
                if not (math.isnan(r) and self.skip_nan_checks):
                    modules.append(ModuleScore(name=name, type=module_type(name), score=r, shape=tuple(w.shape)))
        return Scores(scorer=self.name, options=self.options.model_dump(),
                      fingerprint=getattr(weights, "fingerprint", None), modules=modules)

    skip_nan_checks = False  # True: a NaN from check() means "leave the module out"

    def check(self, name: str, w: torch.Tensor) -> float | None:
        """A score to record without spectra (NaN: skip or record), or None to compute it."""
        raise NotImplementedError

    def formula(self, name: str, s: torch.Tensor, shape: tuple[int, int]) -> float:
        raise NotImplementedError

    @property
    def exact_method(self) -> Method:
        return self.options.method

    def approximates(self, w: torch.Tensor) -> bool:
        """True when ``w`` is scored by :meth:`approximate` instead of exact singular values."""
        return False

    def approximate(self, items: list[tuple[str, torch.Tensor]]) -> list[float]:
        raise NotImplementedError


class SpectrumScorer(SpectralScorer):
    """Spectrum's SNR recipe, reproducing the reference tool's numbers (not scale-invariant)."""

    name = "spectrum"

    class Options(StrategyOptions):
        variant: Literal["legacy", "current"] = Field(
            default="legacy", description="legacy: zero noise → inf, bad weights are errors; "
                                          "current: zero noise counts as 1.0, bad weights score NaN.")
        method: Literal["auto", "gram", "svd", "slq"] = Field(
            default="auto", description="How singular values are computed; slq: approximate (stochastic "
                                        "Lanczos quadrature) for matrices whose smaller side is ≥ exact_below.")
        probes: int = Field(default=16, ge=1, description="slq: random probe vectors per matrix.")
        lanczos_steps: int = Field(default=64, ge=2, description="slq: Lanczos steps (quadrature nodes) per probe.")
        exact_below: int = Field(default=1024, ge=0, description="slq: matrices with a smaller side below "
                                                                 "this are scored exactly (cheap there).")
        seed: int = Field(default=0, description="slq: seed of the probe vectors (per matrix, by name).")

    @property
    def exact_method(self) -> Method:
        return "auto" if self.options.method == "slq" else self.options.method

    def approximates(self, w: torch.Tensor) -> bool:
        return self.options.method == "slq" and min(w.shape) >= max(2, self.options.exact_below)

    def approximate(self, items: list[tuple[str, torch.Tensor]]) -> list[float]:
        o = self.options
        out = [math.nan] * len(items)

        def run(i: int) -> None:
            name, w = items[i]
            with phase("approx"):
                nodes, weights = spectral_measure(w, o.probes, o.lanczos_steps, probe_seed(o.seed, name))
            with phase("score"):
                out[i] = spectrum_snr_estimate(nodes, weights, tuple(w.shape), o.variant)

        on_workers([lambda i=i: run(i) for i in range(len(items))])
        return out

    def check(self, name: str, w: torch.Tensor) -> float | None:
        if not bool(torch.isfinite(w).all()):
            if self.options.variant == "legacy":
                raise InputError(f"weight {name} contains NaN or Inf values",
                                 hint="fix the checkpoint, or use --variant current to record NaN for it")
            self.notes.append(f"{name}: NaN/Inf weights, recorded as NaN")
            return math.nan
        if not bool(w.any()):
            self.notes.append(f"{name}: all-zero matrix, scored by the reference rule "
                              f"({'inf' if self.options.variant == 'legacy' else 'NaN'})")
        return None

    def formula(self, name: str, s: torch.Tensor, shape: tuple[int, int]) -> float:
        return spectrum_snr(s, tuple(shape), self.options.variant)


class MPScorer(SpectralScorer):
    """Marchenko–Pastur signal energy above the noise bulk edge over bulk energy (scale-invariant)."""

    name = "mp"

    class Options(StrategyOptions):
        on_bad: Literal["error", "skip"] = Field(
            default="error", description="NaN/Inf or all-zero matrices: stop with an error, or skip them.")
        method: Literal["auto", "gram", "svd"] = Field(default="auto", description="How singular values are computed.")

    skip_nan_checks = True

    def check(self, name: str, w: torch.Tensor) -> float | None:
        if min(w.shape) < 2:
            self.notes.append(f"{name}: skipped, a {w.shape[0]}×{w.shape[1]} matrix has no noise bulk")
            return math.nan
        problem = ("contains NaN or Inf values" if not bool(torch.isfinite(w).all())
                   else "is all zeros" if not bool(w.any()) else None)
        if problem is None:
            return None
        if self.options.on_bad == "error":
            raise InputError(f"weight {name} {problem}", hint="fix the checkpoint, or set the mp option on_bad=skip")
        self.notes.append(f"{name}: skipped, {problem}")
        return math.nan

    def formula(self, name: str, s: torch.Tensor, shape: tuple[int, int]) -> float:
        return mp_snr(s, tuple(shape))


SCORERS = [RandomScorer, SpectrumScorer, MPScorer, GradNormScorer]
