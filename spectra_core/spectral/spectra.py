"""Singular values, fast: eigenvalues of the smaller Gram matrix in float64, batched by shape.

Only ``torch.linalg`` routines are used. ``method="gram"`` forms W·Wᵀ (or Wᵀ·W, whichever is
smaller) in float64 (row/column chunks bound the extra memory) and takes ``eigvalsh``; float64 keeps
the squared condition number harmless for singular values above ~1e-6·σ_max. ``method="auto"``
re-does a matrix with ``svdvals`` (float64) when its lower quartile singular value falls below that,
so IQR-based scores stay exact for rank-deficient matrices. ``method="svd"`` always uses ``svdvals``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Method = Literal["auto", "gram", "svd"]
CHUNK_ELEMENTS = 1 << 24  # 16 Mi elements per float64 chunk (128 MiB)
RELIABLE = 1e-6  # below this fraction of σ_max, Gram singular values are not trusted by "auto"


def _gram(w: torch.Tensor) -> torch.Tensor:
    """The smaller Gram matrix of a 2-D tensor (or a batch), in float64, built in chunks."""
    n, m = w.shape[-2:]
    if n < m:  # wide: W·Wᵀ, chunk over columns
        w = w.mT
        n, m = m, n
    g = torch.zeros(*w.shape[:-2], m, m, dtype=torch.float64)
    batch = w[..., :1, :1].numel()
    rows = max(1, CHUNK_ELEMENTS // (m * batch))
    for start in range(0, n, rows):
        block = w[..., start:start + rows, :].to(torch.float64)
        g += block.mT @ block
    return g


def singular_values(ws: Sequence[torch.Tensor], method: Method = "auto") -> list[torch.Tensor]:
    """Descending float64 singular values of each 2-D tensor; same-shape tensors share one batch."""
    out: list[torch.Tensor | None] = [None] * len(ws)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(ws):
        groups.setdefault(tuple(w.shape), []).append(i)
    for idx in groups.values():
        if method == "svd":
            for i in idx:
                out[i] = _svdvals(ws[i])
            continue
        batch = torch.stack([ws[i] for i in idx]) if len(idx) > 1 else ws[idx[0]].unsqueeze(0)
        ev = torch.linalg.eigvalsh(_gram(batch))
        svs = ev.clamp_min(0).sqrt().flip(-1)
        for j, i in enumerate(idx):
            s = svs[j]
            if method == "auto" and _unreliable(s):
                s = _svdvals(ws[i])
            out[i] = s
    return out  # type: ignore[return-value]


def _svdvals(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w.to(torch.float64))


def _unreliable(s: torch.Tensor) -> bool:
    """True when the lower-quartile singular value is too small for the Gram route to resolve."""
    if s.numel() < 2 or s[0] <= 0:
        return False
    q25 = s[int((s.numel() - 1) * 0.75)]  # descending: index of the 25 % quantile from the bottom
    return bool(q25 < RELIABLE * s[0])
