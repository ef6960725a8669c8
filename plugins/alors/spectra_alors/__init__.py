"""The ``alors`` method: LoRA ranks in SNR tiers on a 4-bit base, resized between tiers after training."""

from __future__ import annotations

from spectra_core import Method, hookimpl

from .allocator import AlorsTiers
from .rebalancer import AlorsResize


@hookimpl
def spectra_allocators():
    return [AlorsTiers]


@hookimpl
def spectra_rebalancers():
    return [AlorsResize]


@hookimpl
def spectra_methods():
    return [Method(
        name="alors",
        description="SNR tiers per module type (top 25 % rank 16, next 25 % rank 4, rest frozen) with rsLoRA "
                    "and per-tier LR on a 4-bit NF4 base; after training modules move between tiers, their "
                    "LoRA resized by truncated SVD or zero-padding.",
        defaults={
            "quantizer": {"name": "bnb-nf4"},
            "scorer": {"name": "spectrum"},
            "allocator": {"name": "alors-tiers"},
            "rebalancer": {"name": "alors-resize"},
            "exporters": [{"name": "peft-adapter"}, {"name": "merged"}, {"name": "report"}],
            "training": {"gradient_checkpointing": True},
        },
    )]
