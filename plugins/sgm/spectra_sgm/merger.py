"""Gradient merger ``cosine-groups``: modules whose calibration gradients agree share one LoRA."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from spectra_core import AdapterPlan, GradientMerger
from spectra_core.strategies import TrainingSession

from .artifacts import similarity_record, write_artifacts
from .assign import assign, measure
from .options import GroupingOptions
from .projection import MemberGradients
from .tying import tie_groups


class CosineGroups(GradientMerger):
    """Group same-shape modules by the cosine of their calibration gradients; each group trains one LoRA."""

    name = "cosine-groups"

    class Options(GroupingOptions):
        merge: Literal["sum", "project"] = Field(
            default="sum", description="sum: tied factors get the sum of the members' gradients. project: "
            "that sum projected onto the members' top-q shared gradient directions (see docs/methods/sgm.md).")
        project_rank: int = Field(default=1, gt=0, description="q, the directions kept by merge: project.")

    def __init__(self, options: GroupingOptions | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._members: MemberGradients | None = None

    def calibrate(self, session: TrainingSession) -> AdapterPlan:
        plan = session.plan.model_copy(deep=True)
        found = measure(session, plan, self.options)
        groups = assign(plan, found, self.options, step=session.step, strategy=self.name)
        write_artifacts(getattr(session, "run_dir", None),
                        similarity_record(found, groups, self.options, step=session.step, strategy=self.name))
        return plan

    def tie(self, session: TrainingSession) -> None:
        lora = session.lora_modules()
        tie_groups(session.plan, lora)
        if self.options.merge == "project" and session.optimizer is not None:
            self._members = self._members or MemberGradients()
            self._members.attach(session.plan, lora)

    def merge_gradients(self, session: TrainingSession) -> None:
        if self._members is not None:
            self._members.merge(session.plan, session.lora_modules(), self.options.project_rank)
