"""Gradient merger ``cosine-groups``: modules whose calibration gradients agree share one LoRA."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from spectra_core import Change, GradientMerger, GroupGradients, TrainingSession

from .artifacts import similarity_record, write_artifacts
from .assign import assign, measure
from .options import GroupingOptions
from .projection import projected


class CosineGroups(GradientMerger):
    """Group same-shape modules by the cosine of their calibration gradients; each group trains one LoRA."""

    name = "cosine-groups"

    class Options(GroupingOptions):
        merge: Literal["sum", "project"] = Field(
            default="sum", description="sum: tied factors get the sum of the members' gradients. project: "
            "that sum projected onto the members' top-q shared gradient directions (see docs/methods/sgm.md).")
        project_rank: int = Field(default=1, gt=0, description="q, the directions kept by merge: project.")

    def calibrate(self, session: TrainingSession) -> list[Change]:
        found = measure(session, session.plan, self.options)
        changes, groups = assign(session.plan, found, self.options)
        write_artifacts(session, similarity_record(found, groups, self.options, step=session.step,
                                                   strategy=self.name))
        return changes

    def wants_member_gradients(self) -> bool:
        return self.options.merge == "project"

    def merge_gradients(self, session: TrainingSession,
                        groups: list[GroupGradients]) -> dict[str, dict[str, torch.Tensor]]:
        return projected(groups, self.options.project_rank) if self.options.merge == "project" else {}
