"""`spectra plan` (what would be adapted, and the memory it needs) and `spectra train`."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from spectra_core.atomic import check_output_file

from .app import app


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@app.command("plan")
def plan_cmd(
    config: Path = typer.Argument(..., help="YAML run config."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides."),
    out: Path = typer.Option(None, "--out", help="Also write the plan as JSON here."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Also run the gradient merger's calibration "
                                   "(loads the model and data) and show the groups it forms."),
) -> None:
    """Show what would be adapted (per module type), trainable parameters and estimated memory. Trains nothing."""
    from spectra_core.pipeline import Pipeline

    if out is not None:
        check_output_file(out, "--out")
    pipe = Pipeline.from_yaml(config, overrides=overrides or [])
    from spectra_core.training.memory import estimate_memory  # torch-bound: after the config's own errors

    plan = pipe.plan()
    before = plan.trainable_parameters()
    if calibrate:
        plan = pipe.calibrate(plan)
    tiered, grouped = any(m.tier for m in plan.modules.values()), bool(plan.groups())
    columns = ["type", "active", "tiers" if tiered else "ranks", *(["groups"] if grouped else []), "LoRA params"]
    table = Table(title=f"adapter plan ({plan.allocator}, mode {plan.mode})")
    for col in columns:
        table.add_column(col, justify="left" if col in ("type", "tiers") else "right")
    by_type: dict[str, list] = {}
    for m in plan.modules.values():
        by_type.setdefault(m.type, []).append(m)
    for mtype, mods in by_type.items():
        active = [m for m in mods if m.active]
        cells = {"type": mtype, "active": f"{len(active)}/{len(mods)}", "tiers": _tiers(mods),
                 "ranks": ",".join(map(str, sorted({m.rank for m in active}))) or "-",
                 "groups": str(len({m.group for m in active if m.group is not None})),
                 "LoRA params": f"{sum(m.lora_params() for m in mods):,}"}
        table.add_row(*(cells[c] for c in columns))
    console = Console(soft_wrap=True)  # long summary lines stay whole (greppable in logs)
    survey = pipe.survey()
    console.print("\n".join(_family_lines(survey)), highlight=False)
    console.print(f"adaptable: {survey.adaptable_fraction():.1%} of the model's {survey.total_params:,} parameters "
                  "sit in adapted families", highlight=False)
    for note in (_experts_note(survey, pipe.quantizer), _float_note(survey, pipe.quantizer)):
        if note:
            console.print(note, highlight=False)
    console.print(table)
    if note := _head_note(pipe.config.targets, plan):
        console.print(note, highlight=False)
    for group, members in plan.groups().items():
        console.print(f"group {group}: {', '.join(members)}")
    if pipe.rescoring:
        console.print(pipe.rescoring)
    if plan.trainable_parameters() != before:
        console.print(f"shared LoRAs: {before:,} -> {plan.trainable_parameters():,} trainable parameters "
                      f"({plan.trainable_parameters() / before:.2f}x)")
    mem = estimate_memory(pipe.model_dir(), pipe.quantizer, plan, trust_remote_code=pipe.config.model.trust_remote_code)
    per_rank = sum(sum(m.shape) for m in plan.modules.values())  # LoRA parameters per unit of rank
    console.print(f"trainable parameters: {plan.trainable_parameters():,} "
                  f"({len(plan.active())} of {len(plan.modules)} modules active) = a uniform LoRA of rank "
                  f"{plan.trainable_parameters() / per_rank:.2f} on every target")
    console.print(f"estimated memory ({pipe.quantizer.name}): base {_gib(mem['base_bytes'])} + LoRA "
                  f"{_gib(mem['lora_bytes'])} + grads/AdamW {_gib(mem['optimizer_bytes'])} = "
                  f"{_gib(mem['total_bytes'])} (activations not included)")
    if out is not None:
        plan.save(out)
        console.print(f"plan written to {out}")


def _family_lines(survey: Any) -> list[str]:
    """Every family of the model's weights, one plain line each: adapted, or skipped with the reason."""
    rows = survey.rows()
    width = max(len(r["type"]) for r in rows)
    layer = max(len(r["layer"]) for r in rows)
    lines = ["parameter families (what can carry a LoRA):"]
    for r in rows:
        reason = f"  {r['reason']}" if r["reason"] else ""
        lines.append(f"  {r['status']:<7}  {r['type']:<{width}}  {r['layer']:<{layer}}  {r['count']:>4} tensors "
                     f"{r['params']:>13,} params{reason}")
    return lines


def _experts_note(survey: Any, quantizer: Any) -> str | None:
    """How a 4-bit quantizer stores the fused 3-D expert tensors (4-bit too, or float, with what it costs)."""
    from spectra_core.builtins.quantizers import base_bytes_per_param, other_bytes_per_param, quantizes_experts

    experts = sum(f.params for f in survey.families if f.adapted and f.layer.endswith("(fused experts)"))
    if not experts or quantizer.name == "none":
        return None
    if quantizes_experts(quantizer):
        return (f"{quantizer.name} quantizes the fused 3-D expert tensors too ({experts:,} parameters, "
                f"{_gib(int(experts * base_bytes_per_param(quantizer)))} in 4-bit; bitsandbytes parametrization, "
                "dequantized per forward); their LoRA trains on top (peft target_parameters)")
    return (f"note: {quantizer.name} leaves the fused 3-D expert tensors ({experts:,} parameters, "
            f"{_gib(int(experts * other_bytes_per_param(quantizer)))}) in float: it quantizes linear layers only; "
            "their memory is in the estimate below. quantizer: bnb-nf4 quantizes them to 4-bit as well")


def _float_note(survey: Any, quantizer: Any) -> str | None:
    """Name the linear layers the quantizer keeps in float32 because the model asks (T5's ``wo``), with their cost."""
    from spectra_core.builtins.quantizers import kept_in_float

    kept = kept_in_float(survey.model, quantizer)
    if not kept:
        return None
    modules = dict(survey.model.named_modules())
    params = sum(modules[n].weight.numel() for n in kept)
    kinds = sorted({n.rpartition(".")[2] for n in kept})
    return (f"note: {quantizer.name} keeps {len(kept)} linear layers ({', '.join(kinds)}; {params:,} parameters, "
            f"{_gib(params * 4)}) in float32, as {type(survey.model).__name__} asks (_keep_in_fp32_modules, for "
            "numerical stability); their LoRA trains on the float weight; the estimate below counts them in float32")


def _head_note(targets: Any, plan: Any) -> str | None:
    """Say so when a user's ``targets.exclude`` replaced the default ``[lm_head]`` and the head is now a target."""
    heads = [n for n in plan.modules if n.split(".")[-1] == "lm_head"]
    if "exclude" not in targets.model_fields_set or not heads:
        return None
    return (f"note: targets.exclude {targets.exclude} replaces the default ['lm_head'], so the output head "
            f"{heads[0]} is a target; add 'lm_head' to targets.exclude to keep it frozen")


def _tiers(mods: list) -> str:
    """Each tier's module count and trained ranks, highest first: 'high 7×r16 medium 8×r4 low 15 frozen'."""
    counts: Counter[str] = Counter(m.tier for m in mods if m.tier is not None)
    ranks = {t: sorted({m.rank for m in mods if m.tier == t and m.active}, reverse=True) for t in counts}

    def label(t: str) -> str:
        return f"{t} {counts[t]}" + ("×" + ",".join(f"r{r}" for r in ranks[t]) if ranks[t] else " frozen")

    return " ".join(label(t) for t in sorted(counts, key=lambda t: ranks[t][:1] or [-1], reverse=True)) or "-"


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="YAML run config."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in output_dir."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in output_dir."),
) -> None:
    """Scan, plan, train and export. Prints held-out loss before/after and where everything went."""
    from spectra_core.pipeline import Pipeline
    from spectra_core.rundir import check_flags, check_output_dir, recover

    started = time.perf_counter()
    check_flags(resume=resume, overwrite=overwrite)
    pipe = Pipeline.from_yaml(config, overrides=overrides or [])
    from spectra_core.data import check_data_source  # torch-bound: after the config's own errors
    from spectra_core.training.trainer import TrainingInterrupted

    from .summary import train_summary

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        recover(pipe.output_dir)
    check_output_dir(pipe.output_dir, resume=resume, overwrite=overwrite)
    if pipe.config.data is not None:
        check_data_source(pipe.config.data)
    try:
        run = pipe.train(resume=resume, overwrite=overwrite)
    except TrainingInterrupted as exc:
        typer.secho(str(exc), err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(exc.exit_code) from None
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if pipe.exporters:
        typer.echo("exporting: " + ", ".join(e.name for e in pipe.exporters))
    exports = pipe.export(run) if pipe.exporters else {}
    typer.echo("\n".join(train_summary(run, exports, time.perf_counter() - started)))
