"""Baselines a peft user already has, as strategies: peft's target matching (uniform rank, q/v only,
the last N layers via ``layers_to_transform``) and KappaTune's condition-number selection."""

from __future__ import annotations

from spectra_core import hookimpl

from .allocator import PeftTargets
from .kappatune import KappaTuneScorer


@hookimpl
def spectra_allocators():
    return [PeftTargets]


@hookimpl
def spectra_scorers():
    return [KappaTuneScorer]
