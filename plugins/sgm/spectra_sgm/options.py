"""Options shared by the gradient merger ``cosine-groups`` and the rebalancer ``cosine-regroup``."""

from __future__ import annotations

from pydantic import Field

from spectra_core.strategies import StrategyOptions

from .grouping import Linkage


class GroupingOptions(StrategyOptions):
    """How gradients are measured and how modules are grouped."""

    threshold: float = Field(default=0.0, ge=-1.0, le=1.0,
                             description="Merge two clusters while their linkage cosine similarity is ≥ this "
                                         "(a cosine, so within [-1, 1]). 0: merge only non-opposed gradients.")
    linkage: Linkage = Field(default="average", description="Cluster similarity: mean (average), minimum "
                                                              "(complete) or maximum (single) of pair cosines.")
    max_group_size: int | None = Field(default=4, ge=2, description="At most this many modules per group "
                                                                     "(null: no limit).")
    contiguous: bool = Field(default=False, description="Only group modules of adjacent layers.")
    calibration_batches: int = Field(default=8, gt=0, description="Training batches (per process) whose "
                                                                  "gradients are measured.")
    sketch_dim: int = Field(default=64, gt=0, description="Columns of the random sketch of each weight gradient.")
    seed: int = Field(default=0, description="Seed of the fixed random sketch matrices.")
