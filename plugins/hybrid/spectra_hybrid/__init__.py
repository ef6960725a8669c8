"""The ``hybrid`` method: LoRA on the top-SNR modules of each type (Spectrum-25 + QLoRA)."""

from __future__ import annotations

from spectra_core import Method, hookimpl

from .allocator import SpectrumTopAllocator
from .rebalancer import SnrReselect


@hookimpl
def spectra_allocators():
    return [SpectrumTopAllocator]


@hookimpl
def spectra_rebalancers():
    return [SnrReselect]


@hookimpl
def spectra_methods():
    return [Method(
        name="hybrid",
        description="Spectrum top-25 % SNR modules per type train a LoRA on a 4-bit NF4 base; "
                    "LoRA sits in every target, re-selected by SNR after training.",
        defaults={
            "quantizer": {"name": "bnb-nf4"},
            "scorer": {"name": "spectrum"},
            "allocator": {"name": "spectrum-top",
                          "options": {"top_fraction": 0.25, "rank": 16, "alpha": 32, "mode": "all-inactive"}},
            "rebalancer": {"name": "snr-reselect"},
            "exporters": [{"name": "peft-adapter"}, {"name": "merged"}, {"name": "spectrum-yaml"}, {"name": "report"}],
        },
    )]
