"""`spectra export RUN_DIR [--only NAME ...]`: write a finished run's deliverables into RUN_DIR/exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from spectra_core.atomic import check_writable, clean_leftovers
from spectra_core.errors import ConfigError
from spectra_core.registry import Registry
from spectra_core.strategies import Exporter

from .app import app


@app.command("export")
def export(
    run_dir: Path = typer.Argument(..., help="Output directory of a finished `spectra train`."),
    only: list[str] = typer.Option(None, "--only", help="Run only this exporter (repeatable); default: the "
                                   "exporters in the run's config."),
) -> None:
    """Run the run's exporters (or only those named) into RUN_DIR/exports/<exporter dir>."""
    from spectra_core.registry import get_registry
    from spectra_core.run import Run

    registry = get_registry()
    run = Run.load(run_dir, registry=registry)
    exporters = select_exporters(run.config, only or [], registry)
    check_writable(Path(run_dir) / "exports", "export directory")
    clean_leftovers(Path(run_dir) / "exports")  # what a killed export left behind
    for exporter in exporters:
        typer.echo(f"{exporter.name}: exporting ...")
        path = exporter.export(run, Path(run_dir) / "exports" / exporter.default_dirname)
        typer.echo(f"{exporter.name}: wrote {path}")


def select_exporters(config: Any, only: list[str], registry: Registry) -> list[Exporter]:
    """The configured exporters, or those named in ``only`` (configured options kept, else defaults)."""
    configured = {section.name: section.options for section in config.exporters}
    names = list(dict.fromkeys(only)) or list(configured)
    if not names:
        available = ", ".join(sorted(registry.strategies["exporter"])) or "none installed"
        raise ConfigError("the run's config lists no exporters", hint=f"name some with --only (available: {available})")
    return [registry.create("exporter", name, configured.get(name)) for name in names]
