"""Deterministic agglomerative grouping of modules by gradient cosine similarity."""

from __future__ import annotations

from typing import Literal

import torch

Linkage = Literal["average", "complete", "single"]


def linkage_similarity(sim: torch.Tensor, a: list[int], b: list[int], linkage: Linkage) -> float:
    """Similarity between two clusters: mean, minimum or maximum of the cross-pair cosines."""
    block = sim[a][:, b]
    if linkage == "average":
        return float(block.mean())
    return float(block.min() if linkage == "complete" else block.max())


def contiguous(layers: list[int | None]) -> bool:
    """True when the layer indices are all known and their distinct values form one run of consecutive
    integers (experts of one layer are adjacent to each other)."""
    if any(x is None for x in layers):
        return False
    ordered = sorted(set(layers))
    return ordered == list(range(ordered[0], ordered[0] + len(ordered)))


def agglomerate(sim: torch.Tensor, threshold: float, *, layers: list[int | None], linkage: Linkage = "average",
                max_size: int | None = None, only_contiguous: bool = False) -> list[list[int]]:
    """Clusters of indices into ``sim`` (k × k cosines), each sorted, ordered by first index.

    Repeatedly merges the two clusters with the highest linkage similarity while it is ≥ ``threshold``,
    skipping merges that would exceed ``max_size`` members or (``only_contiguous``) span non-adjacent
    layers. Ties go to the pair that comes first in index order, so the result is deterministic.
    """
    clusters = [[i] for i in range(sim.shape[0])]
    while True:
        best: tuple[float, int, int] | None = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                merged = clusters[a] + clusters[b]
                if max_size is not None and len(merged) > max_size:
                    continue
                if only_contiguous and not contiguous([layers[i] for i in merged]):
                    continue
                s = linkage_similarity(sim, clusters[a], clusters[b], linkage)
                if s >= threshold and (best is None or s > best[0]):
                    best = (s, a, b)
        if best is None:
            return sorted(clusters)
        _, a, b = best
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]


def mean_pairwise(sim: torch.Tensor, members: list[int]) -> float:
    """Mean cosine over the distinct pairs of a cluster (1.0 for a singleton)."""
    k = len(members)
    if k < 2:
        return 1.0
    block = sim[members][:, members]
    return float((block.sum() - k) / (k * (k - 1)))
