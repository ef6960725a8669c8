"""Rebalancer ``cosine-regroup``: measure gradients again every K steps and regroup the shared LoRAs."""

from __future__ import annotations

from spectra_core import Change, Rebalancer, TrainingSession

from .artifacts import similarity_record, write_artifacts
from .assign import assign, measure
from .options import GroupingOptions


class CosineRegroup(Rebalancer):
    """Re-measure gradient cosines on the trained model and regroup; changes go to the plan history."""

    name = "cosine-regroup"

    class Options(GroupingOptions, Rebalancer.Options):
        """The merger's grouping options plus ``every_steps``."""

    def rebalance(self, session: TrainingSession) -> list[Change]:
        """The new groups as ``Tie`` changes starting from the best rank-r approximation of their members'
        mean update (the core keeps a group whose members are unchanged, parameters and optimizer state
        included); members leaving a group keep its current values as their own LoRA (``Untie``)."""
        found = measure(session, session.plan, self.options)
        changes, groups = assign(session.plan, found, self.options)
        write_artifacts(session, similarity_record(found, groups, self.options, step=session.step,
                                                   strategy=self.name))
        return changes
