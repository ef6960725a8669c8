"""The calibration signal ``G·R`` lives in core (:mod:`spectra_core.calibration`); re-exported here."""

from spectra_core.calibration import GradientSketch, projection

__all__ = ["GradientSketch", "projection"]
