"""Stochastic Lanczos quadrature (SLQ): the distribution of a matrix's singular values, estimated
without forming or diagonalising its Gram matrix.

For ``G = WᵀW`` (the smaller Gram matrix) and a unit Rademacher probe ``v``, ``k`` Lanczos steps give
a ``k``-point Gauss quadrature ``vᵀ f(G) v ≈ Σ_j τ_j² f(θ_j)`` (θ: eigenvalues of the Lanczos
tridiagonal, τ: first components of its eigenvectors), and ``E[vᵀ f(G) v] = tr f(G) / m``. Averaged
over ``p`` probes the atoms ``(√θ_j, τ_j²/p)`` form a probability measure that approximates the
empirical distribution of the singular values: what Spectrum's score needs (quantiles, partial sums,
the largest value) can be read from it. Cost ``O(p·k·n·m)`` instead of ``O(n·m² + m³)``; each
Lanczos step reads W once, in row chunks small enough to stay in cache while both products use them.
Error: ``O(1/k)`` from the quadrature plus ``O(1/√(p·m))`` from the probes (Chen, Trogdon & Ubaru,
"Analysis of stochastic Lanczos quadrature for spectrum approximation", ICML 2021); the tests and
``benchmarks/scan.py`` measure it against the exact scores.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

CHUNK_ELEMENTS = 1 << 20  # 4 MiB of float32 per chunk: fits in L2/L3 for both products


def _gram_times(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``V·WᵀW`` for probes as rows of V (p×m), float32; W (n×m, any float dtype) is streamed in row
    chunks upcast in cache (rows-of-probes products run several times faster than W·v here)."""
    n, m = w.shape
    rows = max(1, CHUNK_ELEMENTS // m)
    out = torch.zeros_like(v)
    for start in range(0, n, rows):
        block = w[start:start + rows].to(torch.float32)
        out.addmm_(v @ block.T, block)
    return out


def probe_seed(seed: int, name: str) -> int:
    """A per-matrix seed, so each estimate depends only on its own matrix (not order or batching)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") >> 1


def spectral_measure(w: torch.Tensor, probes: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Atoms (singular values, float64, ascending) and weights (summing to 1) approximating the
    empirical singular-value distribution of the 2-D tensor ``w``."""
    if w.shape[0] < w.shape[1]:
        w = w.mT  # the smaller Gram matrix is WᵀW of the tall orientation
    m = w.shape[1]
    steps = min(steps, m)
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (probes, m), generator=gen, dtype=torch.int8)  # on the CPU: same on any device
    v = ((signs.float() * 2 - 1) / m ** 0.5).to(w.device)
    basis = torch.zeros(steps, probes, m, device=w.device)
    alpha = torch.zeros(steps, probes, dtype=torch.float64, device=w.device)
    beta = torch.zeros(steps, probes, dtype=torch.float64, device=w.device)
    for j in range(steps):
        basis[j] = v
        z = _gram_times(w, v)
        alpha[j] = (v * z).sum(1).double()
        for _ in range(2):  # full reorthogonalisation (twice is enough): no ghost eigenvalues
            z -= torch.einsum("jpm,jp->pm", basis[:j + 1], torch.einsum("jpm,pm->jp", basis[:j + 1], z))
        norm = z.norm(dim=1)
        beta[j] = norm.double()
        scale = float(alpha[: j + 1].abs().max()) or 1.0
        live = norm > 1e-6 * scale  # an invariant subspace was found: the rest of T decouples
        v = torch.where(live[:, None], z / norm.clamp_min(1e-30)[:, None], torch.zeros_like(z))
        beta[j] = torch.where(live, beta[j], torch.zeros_like(beta[j]))
    tri = torch.diag_embed(alpha.T) + torch.diag_embed(beta[:-1].T, 1) + torch.diag_embed(beta[:-1].T, -1)
    theta, vectors = torch.linalg.eigh(tri)  # (probes, steps)
    nodes = theta.clamp_min(0).sqrt().reshape(-1).cpu()
    weights = (vectors[:, 0, :] ** 2).reshape(-1).cpu() / probes
    order = torch.argsort(nodes)
    return nodes[order], weights[order]


def _cdf(weights: torch.Tensor) -> torch.Tensor:
    """The CDF at each atom, read at the middle of its weight (the Gauss quadrature's CDF brackets
    the true one between the cumulative weights just below and at an atom)."""
    return torch.cumsum(weights, 0) - weights / 2


def measure_quantile(nodes: torch.Tensor, weights: torch.Tensor, q: float) -> float:
    """The ``q``-quantile of the piecewise-linear CDF through the atoms' midpoints."""
    cdf = _cdf(weights)
    return float(torch.from_numpy(np.interp([q], cdf.numpy(), nodes.numpy())))


def partial_sums(nodes: torch.Tensor, weights: torch.Tensor, threshold: float) -> tuple[float, float]:
    """∫ s dF above and at-or-below ``threshold`` for the piecewise-linear CDF through the atoms'
    midpoints (the outer half-weights stay on the first and last atom)."""
    cdf = _cdf(weights).numpy()
    x = nodes.numpy()
    ends = (weights[0].item() / 2 * x[0], weights[-1].item() / 2 * x[-1])
    mass = np.diff(cdf) * (x[1:] + x[:-1]) / 2  # each segment: uniform density between two atoms
    below = ends[0] * (x[0] <= threshold) + ends[1] * (x[-1] <= threshold) + float(mass[x[1:] <= threshold].sum())
    for j in np.flatnonzero((x[:-1] < threshold) & (x[1:] > threshold)):  # the part below of the cut segment
        density = (cdf[j + 1] - cdf[j]) / (x[j + 1] - x[j])
        below += density * (threshold ** 2 - x[j] ** 2) / 2
    total = sum(ends) + float(mass.sum())
    return total - below, below
