"""The ``sgm`` method (Spectral Gradient Merging): top-SNR modules train LoRA on a 4-bit base, and
modules of one type and shape whose gradients point the same way share a single LoRA."""

from __future__ import annotations

from spectra_core import Method, hookimpl

from .merger import CosineGroups
from .rebalancer import CosineRegroup


@hookimpl
def spectra_gradient_mergers():
    return [CosineGroups]


@hookimpl
def spectra_rebalancers():
    return [CosineRegroup]


@hookimpl
def spectra_methods():
    return [Method(
        name="sgm",
        description="Spectral Gradient Merging: Spectrum top-25 % SNR modules per type get a LoRA on a 4-bit "
                    "NF4 base; modules whose calibration gradients agree (cosine) share one LoRA.",
        defaults={
            "quantizer": {"name": "bnb-nf4"},
            "scorer": {"name": "spectrum"},
            "allocator": {"name": "spectrum-top",
                          "options": {"top_fraction": 0.25, "rank": 16, "alpha": 32, "mode": "targeted"}},
            "gradient_merger": {"name": "cosine-groups"},
            "exporters": [{"name": "peft-adapter"}, {"name": "merged"}, {"name": "report"}],
        },
    )]
