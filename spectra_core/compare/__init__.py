"""``spectra compare``: arms (run-config overlays) × an LR grid × seeds, at equal budgets, each run in its
own subprocess, resumable, reported as a markdown table, a Pareto plot and JSON.

    from spectra_core.compare import Compare, load_compare
    Compare(load_compare("benchmarks/methods.yaml"), "runs/compare").run()
"""

from .config import Cell, CompareConfig, load_compare
from .runner import Compare, JobFailed

__all__ = ["Cell", "Compare", "CompareConfig", "JobFailed", "load_compare"]
