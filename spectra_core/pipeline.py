"""The programmatic API: compose a pipeline from a config, names or strategy instances, and run its
stages one by one (``scan`` → ``plan`` → ``train`` → ``export``) or all at once. The CLI calls this.

    from spectra_core.pipeline import Pipeline
    pipe = Pipeline.from_yaml("configs/demo.yaml", overrides=["training.max_steps=50"])
    scores = pipe.scan(); plan = pipe.plan(scores); run = pipe.train(plan); paths = pipe.export(run)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .config import config_model, load_config
from .errors import ConfigError, InputError
from .plan import AdapterPlan
from .registry import Registry, get_registry
from .scores import Scores
from .strategies import (
    STAGE_BASES,
    Allocator,
    CalibratedScorer,
    Exporter,
    GradientMerger,
    Quantizer,
    Rebalancer,
    RescoringRebalancer,
    Scorer,
    Stage,
    Strategy,
    TargetModule,
    checked_scores,
)
from .targets import Survey

log = logging.getLogger(__name__)
STAGE_KEY = {"exporter": "exporters"}


def _section(strategy: Strategy | None) -> dict[str, Any] | None:
    """``{name, options}`` of a strategy instance, as a config section."""
    if strategy is None:
        return None
    return {"name": strategy.name, "options": strategy.options.model_dump(mode="json")}


STAGE_ARGS = ("quantizer", "scorer", "allocator", "gradient_merger", "rebalancer", "exporters")
DEFAULT_RESCORER = "spectrum"


class Pipeline:
    """One run: a validated config plus one strategy instance per stage.

    ``config`` is the config as run: a stage replaced by name or instance appears there with the
    strategy's name and options, so ``config.yaml`` and the model card record what actually ran.
    """

    def __init__(self, config: BaseModel, *, registry: Registry | None = None, **strategies: Any) -> None:
        """``strategies`` may replace any stage by name or instance: ``scorer="mp"`` or ``scorer=MyScorer()``;
        ``exporters`` takes a list of names or instances. A name keeps the config section's options when
        it names the same strategy (another strategy starts from its defaults)."""
        unknown = sorted(set(strategies) - set(STAGE_ARGS))
        if unknown:
            raise ConfigError(f"Pipeline got unknown keyword argument(s): {', '.join(unknown)}",
                              hint=f"stages that can be replaced: {', '.join(STAGE_ARGS)}")
        self.registry = registry or get_registry()
        self.quantizer: Quantizer = self._build("quantizer", strategies.get("quantizer"), config.quantizer)
        self.scorer: Scorer = self._build("scorer", strategies.get("scorer"), config.scorer)
        self.allocator: Allocator = self._build("allocator", strategies.get("allocator"), config.allocator)
        self.gradient_merger: GradientMerger | None = self._build(
            "gradient_merger", strategies.get("gradient_merger"), config.gradient_merger)
        self.rebalancer: Rebalancer | None = self._build("rebalancer", strategies.get("rebalancer"), config.rebalancer)
        given = strategies.get("exporters")
        self.exporters: list[Exporter] = (
            [self._build("exporter", e, None) for e in given] if given is not None
            else [self._build("exporter", None, section) for section in config.exporters])
        self.rescoring: str | None = self._inject_rescorer()
        self.config = self._as_run(config)
        self._model_dir: Path | None = None
        self._scores: Scores | None = None  # the last scan, handed to train() when no scores are given

    @classmethod
    def from_yaml(cls, path: str | Path, *, overrides: list[str] = (), registry: Registry | None = None,
                  **strategies: Any) -> Pipeline:
        return cls(load_config(Path(path), overrides=list(overrides), registry=registry), registry=registry,
                   **strategies)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, overrides: list[str] = (), registry: Registry | None = None,
                  **strategies: Any) -> Pipeline:
        return cls(load_config(data=data, overrides=list(overrides), registry=registry), registry=registry,
                   **strategies)

    def _build(self, stage: Stage, given: Any, section: Any) -> Any:
        if isinstance(given, Strategy):
            return given
        if isinstance(given, str):
            same = section is not None and section.name == given
            return self.registry.create(stage, given, section.options.model_dump() if same else None)
        if given is not None:
            raise ConfigError(f"Pipeline({STAGE_KEY.get(stage, stage)}=...) got {given!r}",
                              hint=f"pass a registered {stage} name or an instance of a "
                                   f"spectra_core.strategies.{STAGE_BASES[stage].__name__} subclass")
        if section is None:
            return None
        return self.registry.create(stage, section.name, section.options)

    def _inject_rescorer(self) -> str | None:
        """Give a re-scoring rebalancer its scorer; return the sentence ``spectra plan`` prints about it."""
        rebalancer = self.rebalancer
        if not isinstance(rebalancer, RescoringRebalancer):
            return None
        chosen = rebalancer.options.scorer
        if chosen is not None:
            scorer, why = self._create_rescorer(chosen.name, chosen.options), "rebalancer.options.scorer"
        elif not isinstance(self.scorer, CalibratedScorer):
            scorer, why = self.scorer, "the run's scorer"
        else:
            scorer = self._create_rescorer(DEFAULT_RESCORER, {})
            why = f"the default: the run's scorer {self.scorer.name!r} needs training data, not only weights"
        rebalancer.use_scorer(scorer)
        return f"rebalancer {rebalancer.name} re-scores the effective weights with scorer {scorer.name} ({why})"

    def _create_rescorer(self, name: str, options: dict[str, Any]) -> Scorer:
        try:
            return self.registry.create("scorer", name, options)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"rebalancer {self.rebalancer.name!r}: invalid options for its scorer {name!r}: "
                              f"{first['msg']} ({'.'.join(map(str, first['loc']))})",
                              hint="`spectra config schema` lists every scorer's options") from None

    def _as_run(self, config: BaseModel) -> BaseModel:
        """``config`` with every stage section naming the strategy instance that runs and its options
        (a re-scoring rebalancer's scorer included). Strategies not installed in the registry cannot be
        recorded in a loadable config: the given config is kept and a warning says so."""
        data = config.model_dump(mode="json")
        for key, strategy in (("quantizer", self.quantizer), ("scorer", self.scorer), ("allocator", self.allocator),
                              ("gradient_merger", self.gradient_merger), ("rebalancer", self.rebalancer)):
            data[key] = _section(strategy)
        data["exporters"] = [_section(e) for e in self.exporters]
        rebalancer = data["rebalancer"]
        if rebalancer is not None and isinstance(self.rebalancer, RescoringRebalancer):
            rebalancer["options"]["scorer"] = _section(self.rebalancer.scorer)
        missing = [f"{s.stage} {s.name!r} ({type(s).__qualname__})" for s in self._strategies()
                   if self.registry.strategies[s.stage].get(s.name) is not type(s)]
        if missing:
            log.warning("not installed through a plugin, so config.yaml cannot name it for `spectra export` or "
                        "--resume: %s", ", ".join(missing))
            return config
        return config_model(self.registry).model_validate(data)

    def _strategies(self) -> list[Strategy]:
        found = [self.quantizer, self.scorer, self.allocator, self.gradient_merger, self.rebalancer, *self.exporters]
        if isinstance(self.rebalancer, RescoringRebalancer):
            found.append(self.rebalancer.scorer)
        return [s for s in found if s is not None]

    # ----- stages -------------------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    def model_dir(self) -> Path:
        """The base model as a local HF directory (the bundled GGUF is converted once and cached)."""
        if self._model_dir is None:
            from .models import resolve_model_dir

            self._model_dir = resolve_model_dir(self.config.model)
        return self._model_dir

    def survey(self) -> Survey:
        """The model's LoRA targets and every family of its weights: what is adapted, what is skipped and why
        (a data format the model cannot train on is refused here, before any work)."""
        from .models import survey_model

        survey = survey_model(self.model_dir(), self.config.targets, trust_remote_code=self.config.model.trust_remote_code)
        if self.config.data is not None:
            from .data import check_format

            check_format(self.config.data, survey.model.config)
        return survey

    def targets(self) -> list[TargetModule]:
        """The targets allocators see (each expert of a fused MoE tensor on its own)."""
        from .targets import plan_targets

        return plan_targets(self.survey().targets)

    def scan(self, *, progress: bool = True) -> Scores:
        """Score every target module's base weight, streamed from the checkpoint (cached by fingerprint).

        A :class:`~spectra_core.strategies.CalibratedScorer` scores a calibration session instead
        (base + probe LoRA + the config's training data; not cached)."""
        from .target_scan import scan_targets

        targets = self.targets()
        if isinstance(self.scorer, CalibratedScorer):
            from .training.session import calibration_session

            self._scores = checked_scores(self.scorer.score_session(
                calibration_session(self.config, self.quantizer, self.model_dir(), targets)), self.scorer)
        else:
            self._scores = scan_targets(self.model_dir(), self.scorer, targets, progress=progress,
                                        trust_remote_code=self.config.model.trust_remote_code)
        return self._scores

    def plan(self, scores: Scores | None = None) -> AdapterPlan:
        """Allocate adapter capacity from the scores (scanning first if none are given)."""
        from .targets import fit_plan, plan_targets

        scores = scores if scores is not None else self.scan()
        survey = self.survey()
        for family in survey.unsupported():
            log.warning("%s (%d tensors, %s parameters) stays frozen: %s", family.type, len(family.names),
                        f"{family.params:,}", family.reason)
        targets = plan_targets(survey.targets)
        plan = fit_plan(self.allocator.allocate(scores, targets), targets)
        if plan.method is None:
            plan.method = self.config.method
        plan.check_init(tied=self.gradient_merger is not None)
        if self.rebalancer is not None:
            self.rebalancer.check_plan(plan)
        return plan

    def calibrate(self, plan: AdapterPlan) -> AdapterPlan:
        """``plan`` after the gradient merger's calibration (groups assigned); loads the model and data."""
        from .training.session import calibration_session

        if self.gradient_merger is None:
            raise ConfigError("calibrating a plan (spectra plan --calibrate) needs a gradient_merger in the config",
                              hint="e.g. method: sgm, or gradient_merger: {name: cosine-groups}")
        plan = plan.model_copy(deep=True)
        session = calibration_session(self.config, self.quantizer, self.model_dir(), self.targets(), plan=plan)
        session.apply(self.gradient_merger.calibrate(session), strategy=self.gradient_merger.name)
        return session.plan

    def train(self, plan: AdapterPlan | None = None, *, scores: Scores | None = None,
              resume: bool = False, overwrite: bool = False):
        """Train per the plan (planning first if none is given); returns the finished :class:`spectra_core.run.Run`.

        The run records ``scores`` (default: this pipeline's last scan) as ``scores.json``."""
        from .training.trainer import Trainer

        if self.config.data is None:  # before the scan: nothing is spent on a run that cannot start
            raise InputError("the config has no data section", hint="add data: {path: FILE} to the config")
        scores = scores if scores is not None else self._scores
        if plan is None and not resume:
            scores = scores if scores is not None else self.scan()
            plan = self.plan(scores)
        trainer = Trainer(self, plan=plan, scores=scores)
        return trainer.train(resume=resume, overwrite=overwrite)

    def export(self, run: Any = None) -> dict[str, Path]:
        """Run every configured exporter on a finished run (loaded from ``output_dir`` when not given)."""
        from .run import Run

        run = run if run is not None else Run.load(self.output_dir, registry=self.registry)
        exports = self.output_dir / "exports"
        return {e.name: e.export(run, exports / e.default_dirname) for e in self.exporters}

    def run(self, *, resume: bool = False, overwrite: bool = False) -> dict[str, Path]:
        """Every stage, end to end."""
        return self.export(self.train(resume=resume, overwrite=overwrite))
