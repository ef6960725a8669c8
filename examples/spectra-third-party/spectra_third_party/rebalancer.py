"""Rebalancer ``example-shrink-quiet``: after training, shrink the LoRA of modules that barely moved."""

from __future__ import annotations

from pydantic import Field

from spectra_core import Change, Rebalancer, TrainingSession, resize


class ShrinkQuiet(Rebalancer):
    """The ungrouped active modules with the smallest update ‖ΔW‖/‖W‖ get a smaller rank."""

    name = "example-shrink-quiet"

    class Options(Rebalancer.Options):
        count: int = Field(default=2, gt=0, description="How many modules to shrink.")
        rank: int = Field(default=2, gt=0, description="Their new rank.")

    def rebalance(self, session: TrainingSession) -> list[Change]:
        candidates = [m.name for m in session.plan.active() if m.group is None and m.rank > self.options.rank]
        moved = {}
        for name in candidates:
            handle = session.adapter(name)
            moved[name] = float(handle.delta().norm() / handle.base_weight().norm())
        quiet = sorted(moved, key=moved.get)[:self.options.count]
        return [resize(name, self.options.rank, f"update moved the weight by {moved[name]:.2e} (relative)")
                for name in quiet]
