"""Exporter ``example-plan-summary``: a small JSON summary of the final plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from spectra_core import Exporter, RunArtifacts
from spectra_core.atomic import atomic_dir


class PlanSummary(Exporter):
    """``summary.json``: active modules, their ranks, the groups and how many plan changes were made."""

    name = "example-plan-summary"
    default_dirname: ClassVar[str] = "plan-summary"

    def export(self, run: RunArtifacts, destination: Path) -> Path:
        plan = run.plan
        summary = {"active": len(plan.active()), "ranks": {m.name: m.rank for m in plan.active()},
                   "groups": plan.groups(), "changes": len(plan.history)}
        with atomic_dir(destination) as tmp:
            (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        return Path(destination)
