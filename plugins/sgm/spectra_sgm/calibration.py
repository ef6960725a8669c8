"""Calibration for SGM: the core's gradient sketches (:mod:`spectra_core.calibration`), with SGM's
project-merge capture paused meanwhile."""

from __future__ import annotations

import torch

from spectra_core.calibration import collect_gradient_signals
from spectra_core.strategies import TrainingSession

from .projection import paused


def collect_signals(session: TrainingSession, names: list[str], *, batches: int, dim: int,
                    seed: int) -> dict[str, torch.Tensor]:
    """:func:`spectra_core.calibration.collect_gradient_signals` while member-gradient capture is paused
    (calibration passes during training are not training gradients)."""
    with paused():
        return collect_gradient_signals(session, names, batches=batches, dim=dim, seed=seed)
