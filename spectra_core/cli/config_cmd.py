"""`spectra config schema` and `spectra config validate`."""

from __future__ import annotations

from pathlib import Path

import typer

from spectra_core.config import config_schema, load_config

from .app import app

config_app = typer.Typer(help="Inspect and check run configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("schema")
def schema() -> None:
    """Print the JSON schema of a run config, installed plugins' options included."""
    typer.echo(config_schema())


@config_app.command("validate")
def validate(
    path: Path = typer.Argument(..., help="YAML run config."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides."),
) -> None:
    """Validate a config; every error is reported with its path (and line) in the file."""
    cfg = load_config(path, overrides=overrides or [])
    typer.echo(f"{path}: valid (method={cfg.method}, quantizer={cfg.quantizer.name}, "
               f"scorer={cfg.scorer.name}, allocator={cfg.allocator.name})")
