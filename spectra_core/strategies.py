"""The six stage interfaces. A strategy is a small class with a unique ``name``, a pydantic
``Options`` model (its config section) and the one operation its stage needs.

Plugins return strategy *classes* from the registration hooks in :mod:`spectra_core.hookspecs`;
core instantiates them with validated options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .plan import AdapterPlan, PlanChange
from .scores import Scores

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Stage = Literal["quantizer", "scorer", "allocator", "gradient_merger", "rebalancer", "exporter"]
STAGES: tuple[Stage, ...] = ("quantizer", "scorer", "allocator", "gradient_merger", "rebalancer", "exporter")


class StrategyOptions(BaseModel):
    """Base for every strategy's ``Options``: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Strategy(ABC):
    """Common base: a registered name, a stage, validated options."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions

    def __init__(self, options: StrategyOptions | dict[str, Any] | None = None) -> None:
        if options is None or isinstance(options, dict):
            options = self.Options.model_validate(options or {})
        self.options = options

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, options={self.options!r})"


# ----- data handed between stages ------------------------------------------------------------------
class WeightSource(Protocol):
    """Weight matrices to score, yielded one at a time so memory stays bounded."""

    fingerprint: str

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]: ...
    def __len__(self) -> int: ...


class SessionWeights:
    """A :class:`WeightSource` over a session's effective weights (base + LoRA delta), read lazily."""

    def __init__(self, session: TrainingSession, names: list[str]) -> None:
        self.session, self.names = session, list(names)
        self.fingerprint = f"session-step-{session.step}"

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.session.effective_weights(self.names))

    def __len__(self) -> int:
        return len(self.names)


class TargetModule(BaseModel):
    """A linear layer of the loaded model that peft can adapt."""

    name: str
    type: str
    out_features: int
    in_features: int


class TrainingSession(Protocol):
    """What gradient mergers and rebalancers may touch while training runs (see training/session.py)."""

    model: torch.nn.Module  # the peft-wrapped model
    plan: AdapterPlan
    optimizer: torch.optim.Optimizer
    step: int
    run_dir: Path | None  # where a strategy may write its own records (None outside a training run)

    def calibration_batches(self, n: int) -> Iterable[dict[str, torch.Tensor]]:
        """``n`` training batches (input_ids, attention_mask, labels), deterministic for the seed."""
    def lora_modules(self) -> dict[str, torch.nn.Module]:
        """Base-model module name → its peft LoRA layer (``lora_A``/``lora_B`` inside)."""
    def effective_weights(self, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, float32 base weight + LoRA delta), one module at a time (4-bit bases dequantized)."""
    def apply_plan(self) -> None:
        """Make requires_grad and the optimizer's param groups follow ``plan`` (active, lr_scale);
        optimizer state of parameters that keep their shape is preserved."""


class RunArtifacts(Protocol):
    """A finished (or resumed) run as exporters see it."""

    run_dir: Path
    config: Any  # spectra_core.config.RunConfig
    plan: AdapterPlan
    scores: Scores | None

    def peft_model(self) -> torch.nn.Module: ...
    def tokenizer(self) -> Any: ...
    def base_model_dir(self) -> Path: ...


# ----- the six stages ------------------------------------------------------------------------------
class Quantizer(Strategy):
    """Loads the frozen base model, quantized or not."""

    stage: ClassVar[Stage] = "quantizer"

    @abstractmethod
    def load(self, model_dir: Path, *, trust_remote_code: bool = False) -> PreTrainedModel:
        """Load a causal LM from a local HF directory, ready for k-bit/LoRA training."""


class Scorer(Strategy):
    """Scores every weight matrix; higher means more signal."""

    stage: ClassVar[Stage] = "scorer"

    @abstractmethod
    def score(self, weights: WeightSource) -> Scores:
        """Score each (name, matrix) the source yields, in its order."""


class CalibratedScorer(Scorer):
    """A data-aware scorer: it needs the model and training data, not only the weights.

    :meth:`spectra_core.pipeline.Pipeline.scan` hands it a calibration session (see
    :func:`spectra_core.calibration.calibration_session`): the base from the configured quantizer, a
    rank-1 LoRA with ``B = 0`` on every target (``session.plan.modules`` lists them) and the trainer's
    first batches of the config's data (``session.calibration_batches(n)``), seeded by ``training.seed``.
    """

    class Options(StrategyOptions):
        calibration_batches: int = Field(default=8, gt=0, description="Training batches whose gradients are "
                                                                      "measured.")

    def score(self, weights: WeightSource) -> Scores:
        from .errors import InputError

        raise InputError(f"scorer {self.name!r} needs training data, not only weights",
                         hint=f"use a run config with scorer: {{name: {self.name}}} and a data section "
                              "(`spectra plan CONFIG`), or a weight-only scorer for `spectra scan`")

    @abstractmethod
    def score_session(self, session: TrainingSession) -> Scores:
        """Score every module of ``session.plan``, in plan order."""


class Allocator(Strategy):
    """Turns scores into an adapter plan."""

    stage: ClassVar[Stage] = "allocator"

    @abstractmethod
    def allocate(self, scores: Scores, targets: list[TargetModule]) -> AdapterPlan:
        """Decide, for every target module, active/frozen, rank, alpha, LR scale and tier."""


class GradientMerger(Strategy):
    """Groups modules whose gradients agree and makes each group train one shared LoRA."""

    stage: ClassVar[Stage] = "gradient_merger"

    @abstractmethod
    def calibrate(self, session: TrainingSession) -> AdapterPlan:
        """Before training: measure gradients, assign group ids in the plan (history records them)."""

    @abstractmethod
    def tie(self, session: TrainingSession) -> None:
        """Make every group's members share one set of LoRA parameters in ``session.model``."""

    def merge_gradients(self, session: TrainingSession) -> None:  # noqa: B027 - optional hook
        """After each backward pass, before the optimizer step: combine member gradients.

        Tied parameters already receive the summed member gradient; override for other rules.
        """


class Rebalancer(Strategy):
    """Re-scores the adapted model and changes the plan (what is active, ranks, groups)."""

    stage: ClassVar[Stage] = "rebalancer"

    class Options(StrategyOptions):
        every_steps: int | None = Field(default=None, gt=0, description="Also rebalance every K optimizer steps "
                                                                         "(it always runs once after training).")

    def every_steps(self) -> int | None:
        """Also run every K optimizer steps (None: only once, after training)."""
        return getattr(self.options, "every_steps", None)

    def check_plan(self, plan: AdapterPlan) -> None:  # noqa: B027 - optional hook
        """Before training (and in ``spectra plan``): raise ConfigError if this rebalancer cannot work on ``plan``."""

    @abstractmethod
    def rebalance(self, session: TrainingSession) -> list[PlanChange]:
        """Change model, optimizer and ``session.plan`` consistently; return the changes made."""


class RescoringRebalancer(Rebalancer):
    """A rebalancer that re-scores the effective weights (base + LoRA delta) with a weight-only scorer.

    The scorer is created with the rebalancer, so a misspelled scorer or option fails when the run's
    config is loaded, not after training.
    """

    class Options(Rebalancer.Options):
        scorer: str = Field(default="spectrum", description="Weight-only scorer for the effective weights.")
        scorer_options: dict[str, Any] = Field(default_factory=dict, description="Options of that scorer.")

    def __init__(self, options: StrategyOptions | dict[str, Any] | None = None) -> None:
        from .errors import ConfigError
        from .registry import get_registry

        super().__init__(options)
        name = self.options.scorer
        try:
            self.scorer = get_registry().create("scorer", name, self.options.scorer_options)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"rebalancer {self.name!r}: invalid scorer_options for scorer {name!r}: "
                              f"{first['msg']} ({'.'.join(map(str, first['loc']))})",
                              hint="`spectra config schema` lists every scorer's options") from None
        if isinstance(self.scorer, CalibratedScorer):
            raise ConfigError(f"rebalancer {self.name!r} re-scores weights, but scorer {name!r} needs training data",
                              hint="set rebalancer.options.scorer to a weight-only scorer, e.g. spectrum or mp")

    def rescore(self, session: TrainingSession, names: list[str]) -> Scores:
        """Scores of the effective weights of ``names``, in that order."""
        return self.scorer.score(SessionWeights(session, names))


class Exporter(Strategy):
    """Writes one deliverable of a run."""

    stage: ClassVar[Stage] = "exporter"
    default_dirname: ClassVar[str]

    @abstractmethod
    def export(self, run: RunArtifacts, destination: Path) -> Path:
        """Write the deliverable to ``destination`` atomically and return the path written."""


class Method(BaseModel):
    """A named composition of strategies with defaults (e.g. ``hybrid``).

    ``defaults`` is a partial run config; explicit sections in the user's config override it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    defaults: dict[str, Any]


STAGE_BASES: dict[Stage, type[Strategy]] = {
    "quantizer": Quantizer,
    "scorer": Scorer,
    "allocator": Allocator,
    "gradient_merger": GradientMerger,
    "rebalancer": Rebalancer,
    "exporter": Exporter,
}
