"""Singular values, fast: eigenvalues of the smaller Gram matrix in float64, batched by shape.

Only ``torch.linalg`` routines are used. ``method="gram"`` forms W·Wᵀ (or Wᵀ·W, whichever is
smaller) in float64 (row/column chunks bound the extra memory) and takes ``eigvalsh``; float64 keeps
the squared condition number harmless for singular values above ~1e-6·σ_max. ``method="auto"``
re-does a matrix with ``svdvals`` (float64) when its lower quartile singular value falls below that,
so IQR-based scores stay exact for rank-deficient matrices. ``method="svd"`` always uses ``svdvals``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch

from spectra_core.spectral.phases import phase

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
        with phase("upcast"):
            block = w[..., start:start + rows, :].to(torch.float64)
        with phase("gram"):
            g += block.mT @ block
    return g


def singular_values(ws: Sequence[torch.Tensor], method: Method = "auto",
                    workers: int | None = None) -> list[torch.Tensor]:
    """Descending float64 singular values of each 2-D tensor.

    Same-shape tensors are stacked into batches; batches run on ``workers`` Python threads (default:
    torch's thread count), each with one intra-op thread. On a busy 2-core machine this is several
    times faster than one multi-threaded LAPACK call, and each result depends only on its own
    matrix (not on the batching or the number of workers).
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(ws):
        groups.setdefault(tuple(w.shape), []).append(i)
    workers = workers or torch.get_num_threads()
    out: list[torch.Tensor | None] = [None] * len(ws)

    def run(idx: list[int]) -> None:
        for i, s in zip(idx, _batch([ws[i] for i in idx], method)):
            out[i] = s

    on_workers([lambda idx=idx[k::workers]: run(idx) for idx in groups.values()
                for k in range(min(workers, len(idx)))], workers)
    return out  # type: ignore[return-value]


def on_workers(tasks: Sequence[Callable[[], None]], workers: int | None = None) -> None:
    """Run ``tasks`` on ``workers`` Python threads (default: torch's thread count), each with one
    intra-op thread; torch's thread count is restored afterwards."""
    workers = workers or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                task()
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda task: task(), tasks))
    finally:
        torch.set_num_threads(previous)


def _batch(ws: list[torch.Tensor], method: Method) -> list[torch.Tensor]:
    """Singular values of same-shape matrices with one batched Gram + eigvalsh call."""
    if method == "svd":
        return [_svdvals(w) for w in ws]
    batch = torch.stack(ws) if len(ws) > 1 else ws[0].unsqueeze(0)
    gram = _gram(batch)
    with phase("eigensolve"):
        svs = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(-1)
    return [_svdvals(w) if method == "auto" and _unreliable(s) else s for w, s in zip(ws, svs)]


def _svdvals(w: torch.Tensor) -> torch.Tensor:
    with phase("svd"):
        return torch.linalg.svdvals(w.to(torch.float64))


def _unreliable(s: torch.Tensor) -> bool:
    """True when the lower-quartile singular value is too small for the Gram route to resolve."""
    if s.numel() < 2 or s[0] <= 0:
        return False
    q25 = s[int((s.numel() - 1) * 0.75)]  # descending: index of the 25 % quantile from the bottom
    return bool(q25 < RELIABLE * s[0])
