"""The ``report`` exporter: what a run did, as report.md + report.json and PNG figures.

metrics.jsonl schema (read tolerantly): one JSON object per line with a numeric ``step`` and a
numeric ``loss`` (training) and/or ``eval_loss`` (held-out); other keys are ignored, and so are
objects without a finite loss (events). Blank lines are skipped; lines that are not JSON objects
with a numeric step are counted in ``skipped_lines``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import Field

from spectra_core.atomic import atomic_dir
from spectra_core.plan import AdapterPlan
from spectra_core.strategies import Exporter, RunArtifacts, StrategyOptions

from . import plots
from .common import adapter_parameters, base_model_name

Point = tuple[float, float]


class ReportExporter(Exporter):
    """A run summary: report.md and report.json (config, plugins, plan, history, metrics) and figures."""

    name: ClassVar[str] = "report"
    default_dirname: ClassVar[str] = "report"

    class Options(StrategyOptions):
        figures: bool = Field(default=True, description="Draw the PNG figures (loss, scores, ranks, groups).")
        dpi: int = Field(default=120, ge=50, le=600, description="Resolution of the figures.")

    def export(self, run: RunArtifacts, destination: Path) -> Path:
        data = report_data(run)
        with atomic_dir(destination) as tmp:
            if self.options.figures:
                data["figures"] = self._figures(run, data["metrics"], tmp)
            (tmp / "report.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
            (tmp / "report.md").write_text(render_markdown(data), encoding="utf-8")
        return Path(destination)

    def _figures(self, run: RunArtifacts, metrics: dict[str, Any], out: Path) -> dict[str, str]:
        """Draw each figure the run has data for; returns figure kind → file name."""
        dpi, plan, drawn = self.options.dpi, run.plan, {}
        if metrics["train"]["points"] or metrics["eval"]["points"]:
            drawn["loss"] = plots.loss_curve(metrics["train"]["curve"], metrics["eval"]["curve"],
                                             out / "loss_curve.png", dpi=dpi).name
        if run.scores is not None and run.scores.modules:
            drawn["scores"] = plots.snr_heatmap(run.scores, plan, out / "snr_heatmap.png").name
        if len({m.rank for m in plan.injected()}) > 1:
            drawn["ranks"] = plots.ranks_picture(plan, out / "ranks.png", dpi=dpi).name
        if plan.groups():
            drawn["groups"] = plots.groups_picture(plan, out / "groups.png", dpi=dpi).name
        return drawn


# ----- data ---------------------------------------------------------------------------------------
def report_data(run: RunArtifacts) -> dict[str, Any]:
    """Everything the report shows, JSON-ready (non-finite scores become null)."""
    plan: AdapterPlan = run.plan
    return {
        "run_dir": str(run.run_dir),
        "base_model": base_model_name(run),
        "config": run.config.model_dump(mode="json"),
        "plugins": _plugins(run),
        "plan": {"method": plan.method, "allocator": plan.allocator, "mode": plan.mode,
                 "use_rslora": plan.use_rslora, "modules": [_finite(row) for row in plan.table()]},
        "history": [change.model_dump(mode="json") for change in plan.history],
        "metrics": summarize_metrics(Path(run.run_dir) / "metrics.jsonl"),
        "parameters": parameter_counts(run),
        "figures": {},
    }


def _plugins(run: RunArtifacts) -> list[dict[str, str]]:
    from spectra_core.registry import get_registry

    registry = getattr(run, "registry", None) or get_registry()
    return [{"name": p.name, "distribution": p.distribution, "version": p.version}
            for p in registry.plugins.values()]


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    score = row.get("score")
    return row | {"score": score if score is None or math.isfinite(score) else None}


def parameter_counts(run: RunArtifacts) -> dict[str, Any]:
    """Targets, adapted and trained modules; LoRA parameters per the plan and stored in ``final/``."""
    plan: AdapterPlan = run.plan
    final = Path(run.run_dir) / "final" / "adapter_model.safetensors"
    return {
        "target_modules": len(plan.modules),
        "adapted_modules": len(plan.injected()),
        "trained_modules": len(plan.active()),
        "groups": len(plan.groups()),
        "trainable": plan.trainable_parameters(),
        "trainable_without_sharing": sum(m.lora_params() for m in plan.active()),
        "stored_in_adapter": adapter_parameters(final.parent) if final.is_file() else None,
    }


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Loss records of metrics.jsonl, sorted by step (stable), and the count of unreadable lines.

    Objects with a step but no finite loss (events, data statistics) are ignored without counting.
    """
    if not path.is_file():
        return [], 0
    records, skipped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not (isinstance(record, dict) and _number(record.get("step"))):
            skipped += 1
        elif _number(record.get("loss")) or _number(record.get("eval_loss")):
            records.append(record)
    return sorted(records, key=lambda r: r["step"]), skipped


def summarize_metrics(path: Path) -> dict[str, Any]:
    """First/last/min train loss, held-out loss before (first evaluation) and after (last), the curves."""
    records, skipped = read_metrics(path)
    train = [(r["step"], r["loss"]) for r in records if _number(r.get("loss"))]
    evals = [(r["step"], r["eval_loss"]) for r in records if _number(r.get("eval_loss"))]
    return {
        "train": {"points": len(train), "first": _point(train, 0), "last": _point(train, -1),
                  "min": min((p[1] for p in train), default=None), "curve": train},
        "eval": {"points": len(evals), "before": _point(evals, 0), "after": _point(evals, -1), "curve": evals},
        "skipped_lines": skipped,
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _point(points: list[Point], i: int) -> dict[str, float] | None:
    return {"step": points[i][0], "loss": points[i][1]} if points else None


# ----- markdown -----------------------------------------------------------------------------------
def render_markdown(data: dict[str, Any]) -> str:
    plan, metrics, params, figures = data["plan"], data["metrics"], data["parameters"], data["figures"]
    cfg = data["config"]
    strategies = ", ".join(f"{stage} `{cfg[stage]['name']}`" for stage in
                           ("quantizer", "scorer", "allocator", "gradient_merger", "rebalancer") if cfg.get(stage))
    out = [
        f"# Run report: `{Path(data['run_dir']).name}`", "",
        f"- **Base model:** `{data['base_model']}`",
        f"- **Method:** {plan['method'] or 'none'}; {strategies}",
        f"- **Plan:** {params['adapted_modules']} of {params['target_modules']} target modules adapted, "
        f"{params['trained_modules']} trained, {params['groups']} shared-LoRA groups, mode `{plan['mode']}`"
        + (", rsLoRA" if plan["use_rslora"] else ""),
        f"- **Trainable LoRA parameters:** {params['trainable']:,} "
        f"({params['trainable_without_sharing']:,} without group sharing"
        + (f"; {params['stored_in_adapter']:,} stored in final/)" if params["stored_in_adapter"] is not None else ")"),
        "", "## Metrics", "",
        "| | step | loss |", "|---|---:|---:|",
        *(_metric_row(label, point) for label, point in (
            ("train, first", metrics["train"]["first"]), ("train, last", metrics["train"]["last"]),
            ("held-out, before", metrics["eval"]["before"]), ("held-out, after", metrics["eval"]["after"]))),
        "",
    ]
    if metrics["skipped_lines"]:
        out += [f"{metrics['skipped_lines']} unreadable line(s) of metrics.jsonl were skipped.", ""]
    out += [f"![{kind}]({name})" for kind, name in figures.items()] + ([""] if figures else [])
    out += ["## Plan", "", "| module | type | active | rank | alpha | lr scale | tier | group | score |",
            "|---|---|:-:|---:|---:|---:|---|---|---:|"]
    out += [f"| `{m['module']}` | {m['type']} | {'yes' if m['active'] else 'no'} | {m['rank']} | {m['alpha']:g} | "
            f"{m['lr_scale']:g} | {m['tier'] or ''} | {m['group'] or ''} | "
            f"{'' if m['score'] is None else format(m['score'], '.4g')} |" for m in plan["modules"]]
    out += ["", "## Plan history", ""]
    if data["history"]:
        out += ["| step | strategy | module | field | before | after | reason |", "|---:|---|---|---|---|---|---|"]
        out += [f"| {c['step']} | {c['strategy']} | `{c['module']}` | {c['field']} | {c['before']} | {c['after']} | "
                f"{c['reason']} |" for c in data["history"]]
    else:
        out.append("The plan was not changed after allocation.")
    out += ["", "## Plugins", "", "| plugin | distribution | version |", "|---|---|---|"]
    out += [f"| {p['name']} | {p['distribution']} | {p['version']} |" for p in data["plugins"]]
    out += ["", "## Configuration", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(out)


def _metric_row(label: str, point: dict[str, float] | None) -> str:
    return f"| {label} | {point['step']} | {point['loss']:.4f} |" if point else f"| {label} | – | – |"
