"""Buckets of modules that may share one LoRA, and the cosine similarity of their gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spectra_core.plan import AdapterPlan
from spectra_core.spectral.types import layer_index


@dataclass
class Bucket:
    """Candidates of one module type whose LoRA factors have identical shapes and hyper-parameters."""

    label: str
    names: list[str]
    layers: list[int | None]
    similarity: torch.Tensor | None = None  # k × k cosine matrix (float64)


def buckets(plan: AdapterPlan, names: list[str]) -> list[Bucket]:
    """Partition ``names`` by (type, shape, rank, alpha, lr_scale), in plan order.

    Only modules in one bucket can share a LoRA: the same type and weight shape (so the factors have
    the same shapes) and the same rank, alpha and LR scale (so sharing changes nothing else).
    """
    out: dict[tuple, Bucket] = {}
    for name in names:
        m = plan.modules[name]
        key = (m.type, m.shape, m.rank, m.alpha, m.lr_scale)
        label = f"{m.type} {m.shape[0]}×{m.shape[1]} r{m.rank}"
        bucket = out.setdefault(key, Bucket(label=label, names=[], layers=[]))
        bucket.names.append(name)
        bucket.layers.append(layer_index(name))
    return list(out.values())


def cosine_matrix(signals: list[torch.Tensor]) -> torch.Tensor:
    """Pairwise cosine similarity of flattened signals (float64, diagonal exactly 1)."""
    x = torch.stack([s.reshape(-1).double() for s in signals])
    x = x / x.norm(dim=1, keepdim=True)
    sim = (x @ x.T).clamp(-1.0, 1.0)
    sim.fill_diagonal_(1.0)
    return sim
