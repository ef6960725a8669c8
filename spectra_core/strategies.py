"""The six stage interfaces. A strategy is a small class with a unique ``name``, a pydantic
``Options`` model (its config section) and the one operation its stage needs.

Plugins return strategy *classes* from the registration hooks in :mod:`spectra_core.hookspecs`;
core instantiates them with validated options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from .changes import Change
from .plan import AdapterPlan
from .scores import Scores

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from .adapters import AdapterHandle

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


def provenance(cls: type) -> str:
    """Where a strategy class comes from: ``distribution spectra-foo (plugin 'foo', module foo.scorer)``,
    found through the ``spectra`` entry point whose module holds it."""
    from importlib.metadata import entry_points

    module = cls.__module__
    top = module.split(".")[0]
    for ep in entry_points(group="spectra"):
        if ep.module.split(".")[0] == top and ep.dist is not None:
            return f"distribution {ep.dist.name} (plugin {ep.name!r}, module {module})"
    return f"module {module}"


def checked_scores(result: Any, scorer: Scorer) -> Scores:
    """``result`` if it is a :class:`Scores`; else a PluginError naming the scorer's plugin."""
    if isinstance(result, Scores):
        return result
    from .errors import PluginError

    raise PluginError(f"scorer {scorer.name!r} from {provenance(type(scorer))} returned {type(result).__name__}, "
                      "expected spectra_core.Scores",
                      hint="return Scores(scorer=self.name, modules=[ModuleScore(name=..., type=..., score=...), ...])")


# ----- data handed between stages ------------------------------------------------------------------
class WeightSource(Protocol):
    """Weight matrices to score, yielded one at a time so memory stays bounded.

    Contract for scorers: iterating yields ``(name, tensor)`` in a fixed order — the module name
    without peft's prefix and without ``.weight`` (``model.layers.3.self_attn.q_proj``), and a dense
    float tensor on CPU (4-bit and GGUF weights already dequantized). Tensors are 2-D ``out × in``;
    3-D tensors (``experts × out × in``, MoE) may come from checkpoints that store experts stacked —
    score them as a whole or per expert, but return one score per yielded name. A scorer must return
    a score for every name (use NaN for one it cannot score, and say why in ``Scores`` notes); the
    allocator refuses targets without a score. ``spectra_core.spectral.types.module_type(name)`` is
    the public helper for a module's type (``self_attn.q_proj``), ``layer_index(name)`` for its layer.
    ``fingerprint`` identifies the weights (the scan cache keys on it).
    """

    fingerprint: str

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]: ...
    def __len__(self) -> int: ...


class SessionWeights:
    """A :class:`WeightSource` over a session's effective weights (base + LoRA delta), read lazily."""

    def __init__(self, session: TrainingSession, names: list[str]) -> None:
        self.session, self.names = session, list(names)
        self.fingerprint = f"session-step-{session.step}"

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.session.effective_weights(self.names)

    def __len__(self) -> int:
        return len(self.names)


class TargetModule(BaseModel):
    """A weight of the loaded model that peft can adapt: a linear layer (``kind: module``), a fused 3-D
    MoE expert tensor (``kind: parameter``, ``experts`` slices of ``out_features × in_features`` each), or
    one expert of it (``kind: expert``, named ``{tensor}.{i}``: what allocators see)."""

    name: str
    type: str
    out_features: int
    in_features: int
    kind: Literal["module", "parameter", "expert"] = "module"
    experts: int | None = Field(default=None, description="Experts in a fused 3-D parameter target.")
    fan_in_fan_out: bool = Field(default=False, description="The weight is stored in × out (GPT-2's Conv1D).")

    def shape(self) -> tuple[int, int] | tuple[int, int, int]:
        """The plan's shape: ``(out, in)``, or ``(experts, out, in)`` for fused experts."""
        if self.experts is not None:
            return (self.experts, self.out_features, self.in_features)
        return (self.out_features, self.in_features)


class TrainingSession(Protocol):
    """What gradient mergers and rebalancers see while training runs: read-only views and data.

    Strategies never touch the model or the optimizer: they read ``plan`` and the adapters'
    handles, and *return* changes (:mod:`spectra_core.changes`) that the core applies.
    """

    plan: AdapterPlan  # read it; the core changes it when it applies proposed changes
    step: int  # optimizer steps done
    run_dir: Path | None  # where a strategy may write its own records (None outside a training run)
    is_main_process: bool  # write files only when True (several processes run under accelerate)

    def calibration_batches(self, n: int) -> Iterable[dict[str, torch.Tensor]]:
        """``n`` training batches (input_ids, attention_mask, labels), deterministic for the seed."""
    def adapter(self, name: str) -> AdapterHandle:
        """The read-only handle of the LoRA of plan module ``name`` (shape, rank, alpha, delta(), factors())."""
    def adapters(self) -> dict[str, AdapterHandle]:
        """Handles of every module that carries a LoRA, in model order."""
    def effective_weights(self, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, float32 base weight + LoRA delta), one module at a time (4-bit bases dequantized)."""
    def gradient_signals(self, names: list[str], *, batches: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
        """Sketched dense-weight gradients ``G·R`` (out × dim) of ``names`` over ``batches`` calibration
        batches, summed over processes (see :mod:`spectra_core.calibration`)."""


@dataclass
class GroupGradients:
    """The gradients of one tied group after a backward pass, as a gradient merger sees them.

    ``summed`` holds the shared factors' gradients (``A``: r×in, ``B``: out×r), which autograd made
    the sum of the members' gradients. ``per_member`` holds each member's own gradient of the shared
    factors when the merger asked for them (:meth:`GradientMerger.wants_member_gradients`), else None.
    """

    group: str
    members: list[str]
    summed: dict[str, torch.Tensor]
    per_member: dict[str, dict[str, torch.Tensor]] | None = None


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
    """Loads the frozen base model, quantized or not.

    Contract: return a ``transformers`` causal LM whose linear layers peft can wrap; the core freezes
    every parameter, sets up gradient checkpointing and injects the plan's LoRA. Load from safetensors
    only and honour ``trust_remote_code``. Optional ``bytes_per_param()`` / ``other_bytes_per_param()``
    feed the memory estimate of ``spectra plan``.
    """

    stage: ClassVar[Stage] = "quantizer"

    @abstractmethod
    def load(self, model_dir: Path, *, trust_remote_code: bool = False) -> PreTrainedModel:
        """Load a causal LM from a local HF directory, ready for k-bit/LoRA training."""


class Scorer(Strategy):
    """Scores every weight matrix; higher means more signal.

    Contract: :meth:`score` consumes a :class:`WeightSource` (read its contract) and returns a
    :class:`~spectra_core.scores.Scores` with one :class:`~spectra_core.scores.ModuleScore` per
    yielded name; anything else is an error naming the plugin. Scores must be deterministic for the
    options (seed any randomness): the scan cache and the resume check rely on it.
    """

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
    """Turns scores into an adapter plan.

    Contract: return an :class:`~spectra_core.plan.AdapterPlan` with one entry per target (same
    names), each with ``active``, ``rank`` (≤ the smaller weight dimension; 0 = no LoRA), ``alpha``,
    ``lr_scale`` and optionally ``tier``/``score``; ``mode: all-inactive`` keeps a frozen LoRA on
    inactive modules so a rebalancer can switch them on. Leave ``group`` unset: groups come from a
    gradient merger's ``Tie`` changes.
    """

    stage: ClassVar[Stage] = "allocator"

    @abstractmethod
    def allocate(self, scores: Scores, targets: list[TargetModule]) -> AdapterPlan:
        """Decide, for every target module, active/frozen, rank, alpha, LR scale and tier."""


class GradientMerger(Strategy):
    """Groups modules whose gradients agree; each group trains one shared LoRA.

    Contract: :meth:`calibrate` runs once before training (not on ``--resume``: the checkpoint's plan
    has the groups) and returns :class:`~spectra_core.changes.Tie` / ``Untie`` changes. The core ties
    every group of the plan — when it applies them, when it builds the model from a plan that has
    groups (resume) and when it reloads a finished run (export) — so a merger never ties anything
    itself. :meth:`merge_gradients` may replace a group's summed gradient after each backward pass.
    """

    stage: ClassVar[Stage] = "gradient_merger"

    @abstractmethod
    def calibrate(self, session: TrainingSession) -> list[Change]:
        """Before training: measure what it needs (``session.gradient_signals``) and return the groups as
        ``Tie`` changes (the core records them in the plan history)."""

    def wants_member_gradients(self) -> bool:
        """True: the core captures each member's own gradient for :meth:`merge_gradients` (costs one
        factor-sized buffer per member and factor)."""
        return False

    def merge_gradients(self, session: TrainingSession, groups: list[GroupGradients]) -> dict[str, dict[str, torch.Tensor]]:
        """After each backward pass, before the optimizer step: new gradients by group and factor
        (``{"g0": {"A": ..., "B": ...}}``, same shapes as ``summed``). Groups left out keep the sum."""
        return {}


class Rebalancer(Strategy):
    """Re-scores the adapted model and proposes plan changes (what is active, ranks, groups).

    Contract: :meth:`rebalance` runs every ``every_steps`` optimizer steps and once after training; it
    reads the session and returns changes (:mod:`spectra_core.changes`); the core validates them
    (nothing is applied if one is invalid), applies them to model and optimizer, records the plan
    history and logs them. :meth:`check_plan` refuses, before training and in ``spectra plan``, a plan
    it cannot work on.
    """

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
    def rebalance(self, session: TrainingSession) -> list[Change]:
        """The changes to make now (an empty list: none)."""


class StrategySection(StrategyOptions):
    """A nested strategy choice inside another strategy's options: ``{name: ..., options: {...}}``."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class RescoringRebalancer(Rebalancer):
    """A rebalancer that re-scores the effective weights (base + LoRA delta) with a weight-only scorer.

    ``options.scorer`` (``{name, options}``) names the scorer; unset, the run's own scorer is used
    when it is weight-only, else ``spectrum``. The pipeline creates it from its registry and hands
    it over with :meth:`use_scorer` when the config loads, so a misspelt scorer or option fails
    before training; ``spectra plan`` says which scorer it is.
    """

    class Options(Rebalancer.Options):
        scorer: StrategySection | None = Field(
            default=None, description="Weight-only scorer for the effective weights, {name, options}; "
                                      "default: the run's scorer when weight-only, else spectrum.")

    scorer: Scorer | None = None

    def use_scorer(self, scorer: Scorer) -> None:
        """Re-score with ``scorer`` (a weight-only one)."""
        from .errors import ConfigError

        if isinstance(scorer, CalibratedScorer):
            raise ConfigError(f"rebalancer {self.name!r} re-scores weights, but scorer {scorer.name!r} needs "
                              "training data", hint="set rebalancer.options.scorer to a weight-only scorer, "
                                                    "e.g. {name: spectrum} or {name: mp}")
        self.scorer = scorer

    def rescore(self, session: TrainingSession, names: list[str]) -> Scores:
        """Scores of the effective weights of ``names``, in that order."""
        if self.scorer is None:
            from .errors import ConfigError

            raise ConfigError(f"rebalancer {self.name!r} has no scorer",
                              hint="build it through spectra_core.pipeline.Pipeline, or call use_scorer(scorer)")
        return checked_scores(self.scorer.score(SessionWeights(session, names)), self.scorer)


class Exporter(Strategy):
    """Writes one deliverable of a run.

    Contract: read the run (:class:`RunArtifacts`: plan, config, scores, ``peft_model()``) and write
    under ``destination`` atomically (``spectra_core.atomic.atomic_dir``), so a killed export leaves
    the previous deliverable intact; return the path written. ``default_dirname`` names the folder
    under ``RUN/exports``.
    """

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
