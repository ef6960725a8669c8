"""Score formulas on singular values: Spectrum's reference recipe and a Marchenko–Pastur score."""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from spectra_core.strategies import WeightSource

Variant = Literal["legacy", "current"]


def spectrum_snr(s: torch.Tensor, shape: tuple[int, int], variant: Variant = "legacy") -> float:
    """Spectrum's score: (Σ S>τ / Σ S≤τ) / σ_max, τ = IQR(S)/1.349 · (1 + √β).

    ``legacy``: a zero noise sum gives ``inf``; ``current``: it counts as 1.0 (so norms score 1.0).
    """
    s = s.to(torch.float64)
    q = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=torch.float64))
    threshold = spectrum_threshold(float(q[0]), float(q[1]), shape)
    return spectrum_ratio(float(s[s > threshold].sum()), float(s[s <= threshold].sum()), float(s[0]), variant)


def spectrum_threshold(q25: float, q75: float, shape: tuple[int, int]) -> float:
    """τ = IQR/1.349 · (1 + √β): the reference's noise threshold on singular values."""
    n, m = shape
    return (q75 - q25) / 1.349 * (1 + math.sqrt(min(n, m) / max(n, m)))


def spectrum_ratio(signal: float, noise: float, smax: float, variant: Variant) -> float:
    """(signal / noise) / σ_max with the reference's rules for a zero noise sum or a zero matrix."""
    if noise == 0:
        if variant == "legacy":
            return math.inf
        noise = 1.0
    snr = signal / noise
    if smax == 0:
        return math.nan if snr == 0 else math.inf
    return snr / smax


def spectrum_snr_estimate(nodes: torch.Tensor, weights: torch.Tensor, shape: tuple[int, int],
                          variant: Variant = "legacy") -> float:
    """Spectrum's score from an atomic estimate of the singular-value distribution (see :mod:`.slq`):
    the same formula with quantiles, partial sums and σ_max read from the measure."""
    from .slq import measure_quantile, partial_sums

    threshold = spectrum_threshold(measure_quantile(nodes, weights, 0.25),
                                   measure_quantile(nodes, weights, 0.75), shape)
    signal, noise = partial_sums(nodes, weights, threshold)  # min(n, m) × both: it cancels in the ratio
    return spectrum_ratio(signal, noise, float(nodes[-1]), variant)


@lru_cache(maxsize=256)
def mp_median(beta: float) -> float:
    """Median of the Marchenko–Pastur law with aspect ratio β ∈ (0, 1] and unit variance."""
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    theta = np.linspace(0.0, math.pi, 20001)
    t = a + (b - a) * (1 - np.cos(theta)) / 2  # substitution removes the square-root endpoints
    density = ((b - a) / 2) ** 2 * np.sin(theta) ** 2 / (2 * math.pi * beta * np.maximum(t, 1e-300))
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(theta))])
    cdf /= cdf[-1]
    return float(np.interp(0.5, cdf, t))


def mp_edge(s: torch.Tensor, shape: tuple[int, int]) -> float:
    """Bulk edge σ̂(√n + √m), with σ̂ from the median singular value (Gavish–Donoho)."""
    n, m = max(shape), min(shape)
    sigma = float(s.median()) / math.sqrt(n * mp_median(m / n))
    return sigma * (math.sqrt(n) + math.sqrt(m))


def mp_snr(s: torch.Tensor, shape: tuple[int, int]) -> float:
    """Energy of singular values above the MP bulk edge over the energy of the bulk (scale-free)."""
    s = s.to(torch.float64)
    edge = mp_edge(s, shape)
    energy = s * s
    signal = float(energy[s > edge].sum())
    bulk = float(energy[s <= edge].sum())
    return signal / bulk if bulk > 0 else math.inf


def batches(weights: WeightSource, max_items: int = 16,
            max_bytes: int = 256 << 20) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group consecutive (name, tensor) pairs so same-shape matrices can share one batched call."""
    batch: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, w in weights:
        batch.append((name, w))
        size += w.numel() * 8
        if len(batch) >= max_items or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
