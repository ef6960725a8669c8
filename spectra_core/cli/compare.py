"""`spectra compare COMPARE.yaml`: methods side by side at tuned learning rates and equal budgets."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("compare")
def compare_cmd(
    config: Path = typer.Argument(..., help="Compare config: base run config, arms, budget (see docs/benchmarks.md)."),
    out: Path = typer.Option(None, "--out", help="Output directory (default: the config's output_dir)."),
    quick: bool = typer.Option(False, "--quick", help="Run the config's `quick:` budget instead."),
    only: list[str] = typer.Option(None, "--only", help="Run only these arms (repeatable); the report covers all."),
    report: bool = typer.Option(False, "--report", help="Only re-render the table, plot and summary.json."),
    keep_runs: bool = typer.Option(False, "--keep-runs", help="Keep every run directory (adapters, metrics)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Runs at once, each in its own subprocess with the "
                             "config's `threads` (results do not depend on it; step times do)."),
) -> None:
    """Per arm: choose the LR on a validation split of the training data, run every seed at it, report
    held-out loss, paired differences, parameters, memory and step time. Rerun to resume."""
    from spectra_core.compare import Compare, load_compare

    cfg = load_compare(config)
    if quick:
        cfg = cfg.with_quick()
    compare = Compare(cfg, out or Path(cfg.output_dir), keep_runs=keep_runs, jobs=jobs)
    summary = compare.report() if report else compare.run(only or None)
    typer.echo((compare.out / "table.md").read_text(encoding="utf-8"))
    typer.echo(f"results: {compare.out / 'results.jsonl'}\nsummary: {compare.out / 'summary.json'}\n"
               f"plot: {compare.out / 'pareto.png'}")
    if not summary["complete"]:
        typer.echo("not every arm has all its seeds yet: rerun the same command to continue")
