"""Rebalancer ``cosine-regroup``: measure gradients again every K steps and regroup the shared LoRAs."""

from __future__ import annotations

from spectra_core import PlanChange, Rebalancer
from spectra_core.strategies import TrainingSession

from .artifacts import similarity_record, write_artifacts
from .assign import assign, measure
from .options import GroupingOptions
from .tying import merge_members, tie_groups, untie


class CosineRegroup(Rebalancer):
    """Re-measure gradient cosines on the trained model and regroup; changes go to the plan history."""

    name = "cosine-regroup"

    class Options(GroupingOptions, Rebalancer.Options):
        """The merger's grouping options plus ``every_steps``."""

    def rebalance(self, session: TrainingSession) -> list[PlanChange]:
        """Members whose group changes get their own copy of their current values; a new group starts
        from the best rank-r approximation of its members' mean update (``tying.merge_members``);
        unchanged groups keep their parameters and optimizer state."""
        plan = session.plan
        start = len(plan.history)
        old = plan.groups().values()
        before = {frozenset(ms) for ms in old}
        found = measure(session, plan, self.options)
        groups = assign(plan, found, self.options, step=session.step, strategy=self.name)
        new = [ms for ms in groups.values() if frozenset(ms) not in before]
        kept = {m for ms in groups.values() if frozenset(ms) in before for m in ms}
        lora = session.lora_modules()
        # fresh parameters (and optimizer state) for members of changed groups; singletons keep theirs
        for name in {m for ms in old for m in ms} - kept | {m for ms in new for m in ms}:
            untie(lora[name])
        for members in new:
            merge_members([lora[m] for m in members])
        tie_groups(plan, lora)
        session.apply_plan()
        write_artifacts(getattr(session, "run_dir", None),
                        similarity_record(found, groups, self.options, step=session.step, strategy=self.name))
        return plan.history[start:]
