"""SpectraQLoRA core: stage interfaces, plugin registry, config, pipeline, training loop and CLI.

The public API for plugin authors is what this module exports: :data:`hookimpl`, the stage bases,
the data they exchange (plans, scores, sessions, handles) and the changes gradient mergers and
rebalancers propose (:mod:`spectra_core.changes`), and peft's own target matching, KappaTune order and k-bit
preparation for strategies that reproduce plain-peft baselines or load a base. Nothing else is promised to stay stable.
"""

from typing import TYPE_CHECKING

from .changes import Change, ModuleChange, Tie, Untie, activate, annotate, deactivate, resize
from .hookspecs import hookimpl
from .plan import AdapterPlan, LoraInit, ModulePlan, PlanChange
from .scores import ModuleScore, Scores
from .strategies import (
    Allocator,
    CalibratedScorer,
    Exporter,
    GradientMerger,
    GroupGradients,
    Method,
    Quantizer,
    Rebalancer,
    RescoringRebalancer,
    RunArtifacts,
    Scorer,
    StrategyOptions,
    StrategySection,
    TargetModule,
    TrainingSession,
    WeightSource,
)

if TYPE_CHECKING:
    from .adapters import AdapterHandle, kappatune_order, peft_matches, prepare_for_kbit_training

__version__ = "0.1.0"

_FROM_ADAPTERS = ("AdapterHandle", "kappatune_order", "peft_matches", "prepare_for_kbit_training")

__all__ = [
    "AdapterHandle", "AdapterPlan", "Allocator", "CalibratedScorer", "Change", "Exporter", "GradientMerger",
    "GroupGradients", "LoraInit", "Method", "ModuleChange", "ModulePlan", "ModuleScore", "PlanChange", "Quantizer", "Rebalancer",
    "RescoringRebalancer", "RunArtifacts", "Scorer", "Scores", "StrategyOptions", "StrategySection", "TargetModule",
    "Tie", "TrainingSession", "Untie", "WeightSource", "activate", "annotate", "deactivate", "hookimpl",
    "kappatune_order", "peft_matches", "prepare_for_kbit_training", "resize",
    "__version__",
]


def __getattr__(name: str) -> object:
    """The torch-bound part of the API, imported on first use: the CLI's help and a config file's own
    errors then answer without loading torch (seconds per call)."""
    if name in _FROM_ADAPTERS:
        from . import adapters

        return getattr(adapters, name)
    raise AttributeError(f"module 'spectra_core' has no attribute {name!r}")
