"""Built-in data-aware scorer ``grad-norm``: how strongly the training loss pulls on each weight.

Score of module i: an estimate of ``‖Ḡ_i‖_F``, the Frobenius norm of the mean (over calibration
batches) gradient of the per-token loss with respect to the dense base weight ``W_i``. It comes from
the core's calibration sketch (:mod:`spectra_core.calibration`, the machinery the ``sgm`` plugin
uses): ``score_i = ‖Ḡ_i R‖_F`` with ``R`` (in × p) i.i.d. N(0, 1/p), so ``E[score_i²] = ‖Ḡ_i‖²_F``;
the relative standard deviation of ``score_i²`` is at most ``√(2/p)`` (p = ``sketch_dim``).
"""

from __future__ import annotations

from pydantic import Field

from spectra_core.scores import ModuleScore, Scores
from spectra_core.strategies import CalibratedScorer, TrainingSession
from spectra_core.training.distributed import world


class GradNormScorer(CalibratedScorer):
    """Data-aware: Frobenius norm of the loss gradient w.r.t. each dense weight over calibration batches."""

    name = "grad-norm"

    class Options(CalibratedScorer.Options):
        sketch_dim: int = Field(default=256, gt=0, description="Columns p of the random sketch R; the squared "
                                                               "norm's relative error is ≤ √(2/p).")
        seed: int = Field(default=0, description="Seed of the fixed random sketch matrices.")

    def score_session(self, session: TrainingSession) -> Scores:
        opts = self.options
        plan = session.plan.modules
        names = list(plan)
        signals = session.gradient_signals(names, batches=opts.calibration_batches, dim=opts.sketch_dim,
                                           seed=opts.seed)
        scale = 1.0 / (opts.calibration_batches * world())
        modules = [ModuleScore(name=n, type=plan[n].type, score=float(signals[n].norm()) * scale,
                               shape=tuple(plan[n].shape)) for n in names]
        return Scores(scorer=self.name, options=opts.model_dump(), modules=modules)
