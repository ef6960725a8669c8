"""Singular values, fast: eigenvalues of the smaller Gram matrix in float64, batched by shape.

Only ``torch.linalg`` routines are used. ``method="gram"`` forms W·Wᵀ (or Wᵀ·W, whichever is
smaller) in float64 (row/column chunks bound the extra memory) and takes ``eigvalsh``; float64 keeps
the squared condition number harmless for singular values above ~1e-6·σ_max. ``method="auto"``
re-does a matrix with ``svdvals`` (float64) when its lower quartile singular value falls below that,
so IQR-based scores stay exact for rank-deficient matrices. ``method="svd"`` always uses ``svdvals``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    g = torch.zeros(*w.shape[:-2], m, m, dtype=torch.float64, device=w.device)
    batch = w[..., :1, :1].numel()
    rows = max(1, CHUNK_ELEMENTS // (m * batch))
    for start in range(0, n, rows):
        block = w[..., start:start + rows, :].to(torch.float64)
        g += block.mT @ block
    return g


def singular_values(ws: Sequence[torch.Tensor], method: Method = "auto",
                    workers: int | None = None) -> list[torch.Tensor]:
    """Descending float64 singular values of each 2-D tensor, as CPU tensors.

    The work runs where the tensors are (a GPU scan passes CUDA tensors). Same-shape tensors are
    stacked into batches; on the CPU batches run on ``workers`` Python threads (default: torch's
    thread count), each with one intra-op thread. On a busy 2-core machine this is several times
    faster than one multi-threaded LAPACK call, and each result depends only on its own matrix (not
    on the batching or the number of workers). GPU batches run one after another on one thread.
    """
    on_gpu = any(w.device.type != "cpu" for w in ws)
    workers = 1 if on_gpu else workers or torch.get_num_threads()
    groups: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(ws):
        groups.setdefault(tuple(w.shape), []).append(i)
    tasks = [idx[k::workers] for idx in groups.values() for k in range(min(workers, len(idx)))]
    out: list[torch.Tensor | None] = [None] * len(ws)

    def run(idx: list[int]) -> None:
        for i, s in zip(idx, _batch([ws[i] for i in idx], method)):
            out[i] = s.cpu()

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers == 1 or len(tasks) == 1:
            for idx in tasks:
                run(idx)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(run, tasks))
    finally:
        torch.set_num_threads(previous)
    return out  # type: ignore[return-value]


def _batch(ws: list[torch.Tensor], method: Method) -> list[torch.Tensor]:
    """Singular values of same-shape matrices with one batched Gram + eigvalsh call."""
    if method == "svd":
        return [_svdvals(w) for w in ws]
    batch = torch.stack(ws) if len(ws) > 1 else ws[0].unsqueeze(0)
    svs = torch.linalg.eigvalsh(_gram(batch)).clamp_min(0).sqrt().flip(-1)
    return [_svdvals(w) if method == "auto" and _unreliable(s) else s for w, s in zip(ws, svs)]


def _svdvals(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w.to(torch.float64))


def _unreliable(s: torch.Tensor) -> bool:
    """True when the lower-quartile singular value is too small for the Gram route to resolve."""
    if s.numel() < 2 or s[0] <= 0:
        return False
    q25 = s[int((s.numel() - 1) * 0.75)]  # descending: index of the 25 % quantile from the bottom
    return bool(q25 < RELIABLE * s[0])
