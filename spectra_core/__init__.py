"""SpectraQLoRA core: stage interfaces, plugin registry, config, pipeline, training loop and CLI.

Plugin authors need :data:`hookimpl` and the stage bases in :mod:`spectra_core.strategies`.
"""

from .hookspecs import hookimpl
from .plan import AdapterPlan, LoraInit, ModulePlan, PlanChange
from .scores import ModuleScore, Scores
from .strategies import (
    Allocator,
    CalibratedScorer,
    Exporter,
    GradientMerger,
    Method,
    Quantizer,
    Rebalancer,
    RescoringRebalancer,
    Scorer,
    StrategyOptions,
    TargetModule,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterPlan", "Allocator", "CalibratedScorer", "Exporter", "GradientMerger", "LoraInit", "Method", "ModulePlan",
    "ModuleScore", "PlanChange", "Quantizer", "Rebalancer", "RescoringRebalancer", "Scorer", "Scores", "StrategyOptions",
    "TargetModule", "hookimpl", "__version__",
]
