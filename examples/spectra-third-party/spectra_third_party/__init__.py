"""Six example strategies, one per stage, registered through the ``spectra`` entry point."""

from __future__ import annotations

from spectra_core import hookimpl

from .allocator import EveryOtherLayer
from .exporter import PlanSummary
from .merger import AdjacentPairs
from .quantizer import Float32Loader
from .rebalancer import ShrinkQuiet
from .scorer import RmsScorer


@hookimpl
def spectra_quantizers():
    return [Float32Loader]


@hookimpl
def spectra_scorers():
    return [RmsScorer]


@hookimpl
def spectra_allocators():
    return [EveryOtherLayer]


@hookimpl
def spectra_gradient_mergers():
    return [AdjacentPairs]


@hookimpl
def spectra_rebalancers():
    return [ShrinkQuiet]


@hookimpl
def spectra_exporters():
    return [PlanSummary]
