"""`spectra plugins` and `spectra methods`: what is installed."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from spectra_core.registry import get_registry

from .app import app


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List loaded plugins: distribution, version, hooks implemented, strategies provided."""
    reg = get_registry()
    rows = []
    for name, info in reg.plugins.items():
        provided = {}
        for (stage, sname), plugin in sorted(reg.provider.items()):
            if plugin == name:
                provided.setdefault(stage, []).append(sname)
        rows.append({"name": name, "distribution": info.distribution, "version": info.version,
                     "entry_point": info.entry_point, "hooks": info.hooks, "provides": provided})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="spectra plugins")
    for col in ("plugin", "distribution", "version", "hooks", "strategies"):
        table.add_column(col)
    for r in rows:
        provides = "\n".join(f"{stage}: {', '.join(names)}" for stage, names in r["provides"].items())
        table.add_row(r["name"], r["distribution"], r["version"], "\n".join(r["hooks"]), provides)
    Console().print(table)


@app.command()
def methods(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List methods (named strategy compositions) and their defaults."""
    reg = get_registry()
    data = [{"name": m.name, "plugin": reg.provider[("method", m.name)], "description": m.description,
             "defaults": m.defaults} for m in reg.methods.values()]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if not data:
        typer.echo("no methods installed (pip install a method plugin, e.g. plugins/hybrid)")
    for m in data:
        typer.echo(f"{m['name']}  ({m['plugin']}): {m['description']}")
        for key, value in m["defaults"].items():
            typer.echo(f"    {key}: {json.dumps(value)}")
