"""The ``spectrum-yaml`` exporter: the plan's active modules as the Spectrum tool's unfrozen-parameters YAML."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

from spectra_core.errors import InputError
from spectra_core.scores import ModuleScore
from spectra_core.spectral.formats import write_unfrozen_yaml
from spectra_core.spectral.selection import Selection
from spectra_core.strategies import Exporter, RunArtifacts, StrategyOptions


class SpectrumYamlExporter(Exporter):
    """The active modules, per type and best score first, in the Spectrum reference's YAML format."""

    name: ClassVar[str] = "spectrum-yaml"
    default_dirname: ClassVar[str] = "spectrum_unfrozen_parameters.yaml"

    class Options(StrategyOptions):
        pass

    def export(self, run: RunArtifacts, destination: Path) -> Path:
        if run.scores is None:
            raise InputError(f"{run.run_dir} has no scores.json (the run was trained without scores)",
                             hint="train with `spectra train`, or pass scores= to Pipeline.train (a Pipeline that "
                                  "scanned passes its scan)")
        by_name = run.scores.by_name()
        selection: Selection = {}
        for type_ in run.scores.types():
            active = [by_name[m.name] for m in run.plan.active() if m.type == type_ and m.name in by_name]
            selection[type_] = sorted(active, key=_rank_key, reverse=True)
        return write_unfrozen_yaml(selection, Path(destination))


def _rank_key(m: ModuleScore) -> float:
    return -math.inf if math.isnan(m.score) else m.score
