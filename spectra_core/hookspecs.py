"""The table of contents of SpectraQLoRA.

A run flows through six stages; each is a *strategy* chosen by name in the config:

    quantizer ─► scorer ─► allocator ─► [gradient_merger] ─► train ─► [rebalancer] ─► exporter(s)
    load base    score       scores →        group modules,    (core)    re-score,       adapter,
    (NF4 …)      matrices    adapter plan    tie their LoRA              change plan     merged, …

Plugins contribute strategies through the registration hooks below, and *methods* — named
compositions of strategies with defaults (``hybrid``, ``alors``, ``sgm``). Every plugin, the core's
own built-ins included, is found through the entry-point group ``spectra``.

All hooks are called without arguments at start-up, once per plugin; every plugin's results are
collected (no first-result-wins). Each must return a list — of strategy *classes* subclassing the
stage's base in :mod:`spectra_core.strategies`, or of :class:`~spectra_core.strategies.Method`.
Names are unique per stage across all plugins; a duplicate is an error naming both distributions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .strategies import Allocator, Exporter, GradientMerger, Method, Quantizer, Rebalancer, Scorer

PROJECT = "spectra"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def spectra_quantizers() -> list[type[Quantizer]]:
    """Quantizers: load the frozen base model (e.g. ``bnb-nf4``, ``torchao-nf4``, ``none``)."""


@hookspec
def spectra_scorers() -> list[type[Scorer]]:
    """Scorers: give each weight matrix a signal score (e.g. ``spectrum``, ``mp``, ``random``)."""


@hookspec
def spectra_allocators() -> list[type[Allocator]]:
    """Allocators: turn scores into an adapter plan (active modules, ranks, LR scales)."""


@hookspec
def spectra_gradient_mergers() -> list[type[GradientMerger]]:
    """Gradient mergers: group modules by gradient similarity; each group shares one LoRA."""


@hookspec
def spectra_rebalancers() -> list[type[Rebalancer]]:
    """Rebalancers: during or after training, re-score and change the plan (activation, ranks)."""


@hookspec
def spectra_exporters() -> list[type[Exporter]]:
    """Exporters: write a run's deliverables (PEFT adapter, merged model, Spectrum YAML, report)."""


@hookspec
def spectra_methods() -> list[Method]:
    """Methods: named strategy compositions with defaults, chosen by ``method:`` in the config."""
