"""The programmatic API: compose a pipeline from a config, names or strategy instances, and run its
stages one by one (``scan`` → ``plan`` → ``train`` → ``export``) or all at once. The CLI calls this.

    from spectra_core.pipeline import Pipeline
    pipe = Pipeline.from_yaml("configs/demo.yaml", overrides=["training.max_steps=50"])
    scores = pipe.scan(); plan = pipe.plan(scores); run = pipe.train(plan); paths = pipe.export(run)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .config import load_config
from .errors import ConfigError
from .plan import AdapterPlan
from .registry import Registry, get_registry
from .scores import Scores
from .strategies import Allocator, CalibratedScorer, Exporter, GradientMerger, Quantizer, Rebalancer, Scorer, Stage, Strategy, TargetModule


class Pipeline:
    """One run: a validated config plus one strategy instance per stage."""

    def __init__(self, config: BaseModel, *, registry: Registry | None = None, **strategies: Any) -> None:
        """``strategies`` may replace any stage by name or instance: ``scorer="mp"`` or ``scorer=MyScorer()``."""
        self.config = config
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
        self._model_dir: Path | None = None
        self._scores: Scores | None = None  # the last scan, handed to train() when no scores are given

    @classmethod
    def from_yaml(cls, path: str | Path, *, overrides: list[str] = (), **strategies: Any) -> Pipeline:
        return cls(load_config(Path(path), overrides=list(overrides)), **strategies)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, overrides: list[str] = (), **strategies: Any) -> Pipeline:
        return cls(load_config(data=data, overrides=list(overrides)), **strategies)

    def _build(self, stage: Stage, given: Any, section: Any) -> Any:
        if isinstance(given, Strategy):
            return given
        if isinstance(given, str):
            return self.registry.create(stage, given)
        if section is None:
            return None
        return self.registry.create(stage, section.name, section.options)

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

    def targets(self) -> list[TargetModule]:
        from .models import find_targets

        return find_targets(self.model_dir(), self.config.targets,
                            trust_remote_code=self.config.model.trust_remote_code)

    def scan(self, *, progress: bool = True) -> Scores:
        """Score every target module's base weight, streamed from the checkpoint (cached by fingerprint).

        A :class:`~spectra_core.strategies.CalibratedScorer` scores a calibration session instead
        (base + probe LoRA + the config's training data; not cached)."""
        from .spectral.scan import run_scan

        targets = self.targets()
        if isinstance(self.scorer, CalibratedScorer):
            from .calibration import calibration_session

            self._scores = self.scorer.score_session(
                calibration_session(self.config, self.quantizer, self.model_dir(), targets))
        else:
            names = [t.name for t in targets]
            self._scores = run_scan(self.model_dir(), self.scorer, names=names, progress=progress).scores
        return self._scores

    def plan(self, scores: Scores | None = None) -> AdapterPlan:
        """Allocate adapter capacity from the scores (scanning first if none are given)."""
        scores = scores if scores is not None else self.scan()
        plan = self.allocator.allocate(scores, self.targets())
        if plan.method is None:
            plan.method = self.config.method
        plan.check_init(tied=self.gradient_merger is not None)
        if self.rebalancer is not None:
            self.rebalancer.check_plan(plan)
        return plan

    def calibrate(self, plan: AdapterPlan) -> AdapterPlan:
        """``plan`` after the gradient merger's calibration (groups assigned); loads the model and data."""
        from .calibration import calibration_session

        if self.gradient_merger is None:
            raise ConfigError("calibrating a plan (spectra plan --calibrate) needs a gradient_merger in the config",
                              hint="e.g. method: sgm, or gradient_merger: {name: cosine-groups}")
        session = calibration_session(self.config, self.quantizer, self.model_dir(), self.targets(), plan=plan)
        return self.gradient_merger.calibrate(session)

    def train(self, plan: AdapterPlan | None = None, *, scores: Scores | None = None,
              resume: bool = False, overwrite: bool = False):
        """Train per the plan (planning first if none is given); returns the finished :class:`spectra_core.run.Run`.

        The run records ``scores`` (default: this pipeline's last scan) as ``scores.json``."""
        from .training.trainer import Trainer

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
