"""`spectra scan` (score a checkpoint's weights) and `spectra select` (top-percent from a result file)."""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from spectra_core.atomic import atomic_dir, check_output_file, check_writable, clean_leftovers, write_text
from spectra_core.errors import ConfigError, InputError
from spectra_core.scores import Scores
from spectra_core.spectral.formats import load_scores, to_flat, unfrozen_yaml
from spectra_core.spectral import phases
from spectra_core.spectral.selection import (Selection, check_percent, lora_target_regex, lora_targets,
                                             reference_order, top_percent)

from .app import app


def _parse_options(pairs: list[str], variant: str | None) -> dict:
    options: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {pair!r} is not key=value", hint="e.g. --option on_bad=skip")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if variant is not None:
        options["variant"] = variant
    return options


def _split(values: list[str]) -> list[str]:
    return [v for item in values for v in re.split(r"[,\s]+", item) if v]


def _summary(scores: Scores, selection: Selection, title: str) -> Table:
    table = Table(title=title)
    for col, justify in (("type", "left"), ("modules", "right"), ("selected", "right"),
                         ("min", "right"), ("median", "right"), ("max", "right"), ("best", "left")):
        table.add_column(col, justify=justify)
    for type_ in scores.types():
        values = [m.score for m in scores.modules if m.type == type_]
        chosen = selection.get(type_, [])
        table.add_row(type_, str(len(values)), str(len(chosen)), f"{min(values):.4g}",
                      f"{statistics.median(values):.4g}", f"{max(values):.4g}", chosen[0].name if chosen else "-")
    return table


def _console() -> Console:
    """stderr console; wide when not a terminal so logs keep full module names."""
    return Console(stderr=True, width=None if sys.stderr.isatty() else 200)


SCAN_FILES = re.compile(r"^(scores\.json|snr_results\.json|selection\.json|heatmap\.png|"
                        r"unfrozen_parameters_[0-9.e+-]+percent\.yaml)$")


def check_scan_dir(out: Path) -> None:
    """Refuse an --out that a scan cannot (or must not) replace: a file, a directory holding other
    files than a scan's, an unwritable location. Leftovers of killed scans beside it are removed."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; a scan writes a directory",
                         hint="give --out a directory path (new, or an earlier scan's directory to replace)")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not SCAN_FILES.match(p.name))
        if foreign:
            shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            raise InputError(f"--out {out} holds files that are not a scan's ({shown}); a scan replaces its "
                             "whole output directory", hint="give --out a new directory, or an earlier scan's")
    check_writable(out, "--out")
    clean_leftovers(out.parent)


def _slug(model: str) -> str:
    name = Path(model.split(":", 1)[-1]).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).stem if name.endswith((".gguf", ".safetensors")) else name)


@app.command()
def scan(
    model: str = typer.Argument(..., help="Model dir, .safetensors, .gguf, or bundled:smollm2-135m."),
    scorer: str = typer.Option("spectrum", "--scorer", help="Scorer name (spectrum, mp, random, or a plugin's)."),
    variant: str | None = typer.Option(None, "--variant", help="spectrum scorer: legacy | current."),
    option: list[str] = typer.Option([], "--option", "-o", help="Scorer option key=value (repeatable)."),
    types: list[str] = typer.Option([], "--types", help="Module types to scan (repeatable or comma-separated; globs ok)."),
    percent: float = typer.Option(50.0, "--top-percent", help="Keep this percent (1..100) of each type."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default: scans/<model>)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute even if a cached result exists."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or table."),
    device: str = typer.Option("auto", "--device", help="Compute spectra on: auto (GPU if available), cpu, cuda, cuda:N."),
    timings: bool = typer.Option(False, "--timings", help="Print where the time went, per phase, to stderr."),
) -> None:
    """Score every weight matrix; write scores.json, snr_results.json, the YAML, selection.json, heatmap.png
    (together: they appear in --out at once, replacing an earlier scan there, or not at all)."""
    from spectra_core.spectral.heatmap import write_heatmap
    from spectra_core.spectral.scan import run_scan
    from spectra_core.target_scan import checkpoint_source

    check_percent(percent)
    out = out or Path("scans") / _slug(model)
    check_scan_dir(out)
    options = _parse_options(option, variant)
    try:
        result = run_scan(checkpoint_source(model), scorer, options, types=_split(types), use_cache=not no_cache,
                          progress=not quiet, device=device)
    except ValidationError as exc:
        raise ConfigError(f"invalid options for scorer {scorer!r}: {exc.errors()[0]['msg']} "
                          f"({'.'.join(map(str, exc.errors()[0]['loc']))})",
                          hint="see the scorer's options in docs/scan.md") from None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    scores = reference_order(result.scores)
    if not scores.modules:
        raise ConfigError(f"scorer {scorer!r} scored no module of {model}", hint="; ".join(result.notes[:3]) or None)
    if not types and all(m.shape is not None and m.shape[0] == 1 for m in scores.modules):
        raise InputError(f"{model} holds no 2-D weight matrix (only 1-D tensors such as norms and biases): "
                         "nothing LoRA could adapt", hint="scan the full checkpoint (the files with the linear "
                                                          "layers' weights)")
    with phases.phase("selection"):
        selection = top_percent(scores, percent)
        targets = lora_targets(selection)
    pct = f"{percent:g}"
    files = {
        "scores.json": scores.to_json(),
        "snr_results.json": to_flat(scores),
        f"unfrozen_parameters_{pct}percent.yaml": unfrozen_yaml(selection),
        "selection.json": json.dumps({
            "top_percent": percent, "scorer": scores.scorer, "options": scores.options,
            "selected": {t: [m.name for m in ms] for t, ms in selection.items()},
            "lora_targets": targets, "lora_target_regex": lora_target_regex(targets)}, indent=2) + "\n",
    }
    with phases.phase("write"), atomic_dir(out) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        write_heatmap(scores, selection, tmp / "heatmap.png", title=f"{_slug(model)}: {scorer}, top {pct}%")
    console = _console()
    if not quiet:
        how = "cached" if result.cached else f"{result.seconds:.1f} s, {result.world_size} process(es)"
        console.print(_summary(scores, selection, f"{scorer} scan of {model} ({len(scores.modules)} modules, {how})"))
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"wrote {out}/ ({', '.join([*files, 'heatmap.png'])})", highlight=False)
    if timings:
        console.print(phases.table(phases.snapshot()), highlight=False, markup=False)


@app.command()
def select(
    snr_json: Path = typer.Argument(..., help="scores.json from `spectra scan`, or a Spectrum snr_results_*.json."),
    percent: float = typer.Option(..., "--top-percent", help="Keep this percent (1..100) of each type."),
    out: Path | None = typer.Option(None, "--out", help="Write the unfrozen-parameters YAML here (default: stdout)."),
) -> None:
    """Top-percent selection per type from an existing result file (file order breaks ties)."""
    check_percent(percent)
    if out is not None and out.is_dir():
        out = out / f"unfrozen_parameters_{percent:g}percent.yaml"  # the reference tool's file name
    if out is not None:
        check_output_file(out, "--out")
    scores = load_scores(snr_json)
    selection = top_percent(scores, percent)
    text = unfrozen_yaml(selection)
    if out is None:
        typer.echo(text, nl=False)
        return
    write_text(out, text)
    _console().print(_summary(scores, selection, f"top {percent:g}% of {snr_json.name}"))
    typer.echo(f"wrote {out}", err=True)
