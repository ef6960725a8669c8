"""Summarize a compare's results: one row per arm, a markdown table, a Pareto plot, ``summary.json``."""

from __future__ import annotations

import json
import math
import os
import statistics
import textwrap
from pathlib import Path
from typing import Any

from ..atomic import write_text
from .config import Cell
from .worker import code_commit


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def arm_row(compare: Any, arm: str, reference: dict[int, float] | None, base_peak: float | None) -> dict[str, Any]:
    """One arm: the LR grid's validation losses, the chosen LR, and the held-out results at that LR."""
    b = compare.config.budget
    grid = {}
    for lr in b.learning_rates:
        found = [compare.cell_result(Cell(arm, lr, s)) for s in b.tune_seeds]
        if not all(found):
            grid[f"{lr:g}"] = None
        elif any(r.get("diverged") for r in found):
            grid[f"{lr:g}"] = "diverged"
        else:
            grid[f"{lr:g}"] = statistics.fmean(r["validation_loss"] for r in found)
    lr = compare.chosen_lr(arm)
    runs = {s: compare.cell_result(Cell(arm, lr, s)) for s in b.seeds} if lr is not None else {}
    diverged = sorted(s for s, r in runs.items() if r is not None and r.get("diverged"))
    runs = {s: r for s, r in runs.items() if r is not None and not r.get("diverged")}
    row: dict[str, Any] = {"arm": arm, "validation_by_lr": grid, "lr": lr, "seeds": sorted(runs),
                           "diverged_seeds": diverged,
                           "seeds_planned": len(b.seeds), "solved": compare.solved.get(arm)}
    if not runs:
        return row
    losses = {s: r["heldout_loss"] for s, r in runs.items()}
    row["heldout_by_seed"] = losses
    row["loss"], row["loss_std"] = mean_std(list(losses.values()))
    row["start"] = statistics.fmean(r["heldout_loss_start"] for r in runs.values())
    if reference is not None:
        diffs = [losses[s] - reference[s] for s in losses if s in reference]
        row["vs_reference"] = list(mean_std(diffs)) + [len(diffs)] if diffs else None
    first = next(iter(runs.values()))
    row["trainable_parameters"] = first["trainable_parameters"]
    solved = compare.solved.get(arm)
    if solved:  # the plan met the budget; what trained may not (EVA redistributes ranks at init)
        miss = first["trainable_parameters"] / solved["target"] - 1
        row["budget_miss"] = miss if abs(miss) > compare.config.arms[arm].tolerance else None
    row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs.values())
    row["above_model_mib"] = row["peak_rss_mib"] - base_peak if base_peak is not None else None
    cuda = [r["cuda_peak_mib"] for r in runs.values() if r.get("cuda_peak_mib") is not None]
    row["cuda_peak_mib"] = max(cuda) if cuda else None
    row["step_time_s"] = statistics.median(r["step_time_s"] for r in runs.values())
    row["loadavg"] = [min(r["loadavg"] for r in runs.values()), max(r["loadavg"] for r in runs.values())]
    row["commits"] = sorted({r.get("commit", "unknown") for r in runs.values()})
    return row


def summarize(compare: Any) -> list[dict[str, Any]]:
    """Rows for every arm of the config (arms not run yet have no loss)."""
    ref_name = compare.config.reference
    reference = None
    if ref_name is not None:
        ref = arm_row(compare, ref_name, None, None)
        reference = {s: compare.cell_result(Cell(ref_name, ref["lr"], s))["heldout_loss"] for s in ref["seeds"]}
    rows = []
    for arm in compare.config.arms:
        memory = compare.store.get(compare.base_memory_key(arm))
        rows.append(arm_row(compare, arm, None if arm == ref_name else reference,
                            memory["peak_rss_mib"] if memory else None))
    return rows


def paired(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[float] | None]]:
    """``[mean, sd, n]`` of row − column held-out loss over their shared seeds, for every pair of arms
    with results (None where they share no seed); negative: the row arm is better."""
    done = [r for r in rows if "loss" in r]
    out: dict[str, dict[str, list[float] | None]] = {}
    for a in done:
        out[a["arm"]] = {}
        for b in done:
            if a is b:
                continue
            diffs = [a["heldout_by_seed"][s] - b["heldout_by_seed"][s]
                     for s in a["heldout_by_seed"] if s in b["heldout_by_seed"]]
            out[a["arm"]][b["arm"]] = [*mean_std(diffs), len(diffs)] if diffs else None
    return out


def paired_markdown(matrix: dict[str, dict[str, list[float] | None]]) -> str:
    """The paired differences as a table; bold where |mean| exceeds 2 paired standard deviations."""
    arms = list(matrix)
    lines = ["| row − column | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for a in arms:
        cells = []
        for b in arms:
            d = matrix[a].get(b)
            if d is None:  # the diagonal, or no shared seed
                cells.append("–")
                continue
            text = _pm(d[0], d[1], "{:+.3f}") + (f" ({int(d[2])})" if d[2] < 3 else "")
            cells.append(f"**{text}**" if not math.isnan(d[1]) and abs(d[0]) > 2 * d[1] else text)
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(mean: float, sd: float, fmt: str = "{:.4f}") -> str:
    return fmt.format(mean) + ("" if math.isnan(sd) else " ± " + fmt.replace("+", "").format(sd))


def markdown(rows: list[dict[str, Any]], reference: str | None) -> str:
    """The table: one line per arm; arms without finished runs say 'not run'."""
    cuda = any(r.get("cuda_peak_mib") is not None for r in rows)
    head = ["arm", "LR (validation loss per grid LR)", "held-out loss", f"Δ vs {reference or '–'} (paired)",
            "step-0 loss", "trainable params", "peak RSS MiB", "above model MiB", *(["CUDA peak MiB"] if cuda else []),
            "s / step", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in rows:
        grid = ", ".join(f"{lr}: {v:.4f}" if isinstance(v, float) else f"{lr}: {v or 'not run'}"
                         for lr, v in r["validation_by_lr"].items())
        lr = f"**{r['lr']:g}** ({grid})" if r["lr"] is not None else f"not chosen ({grid})"
        if "loss" not in r:
            dashes = " – |" * (len(head) - 4)
            lines.append(f"| {r['arm']} | {lr} | not run |{dashes} 0/{r['seeds_planned']} |")
            continue
        vs = r.get("vs_reference")
        delta = "reference" if r["arm"] == reference else ("–" if not vs else _pm(vs[0], vs[1], "{:+.4f}"))
        above = "–" if r["above_model_mib"] is None else f"{r['above_model_mib']:.0f}"
        cells = [r["arm"], lr, _pm(r["loss"], r["loss_std"]), delta, f"{r['start']:.4f}",
                 f"{r['trainable_parameters']:,}" + (f" (**{r['budget_miss']:+.1%} off budget**)"
                                                      if r.get("budget_miss") is not None else ""),
                 f"{r['peak_rss_mib']:.0f}", above,
                 *([f"{r['cuda_peak_mib']:.0f}" if r["cuda_peak_mib"] is not None else "–"] if cuda else []),
                 f"{r['step_time_s']:.3f}", f"{len(r['seeds'])}/{r['seeds_planned']}"
                 + (f" ({len(r['diverged_seeds'])} diverged)" if r["diverged_seeds"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def setup_line(compare: Any, rows: list[dict[str, Any]]) -> str:
    """Model, data, budget, machine and load: what a reader needs to judge the numbers."""
    cfg, b, s = compare.config, compare.config.budget, compare.splits
    data, training = cfg.base["data"], cfg.base.get("training", {})
    cells = [r["result"] for r in compare.store.records.values() if r.get("job") == "cell"]
    loads = [c["loadavg"] for c in cells if "loadavg" in c]
    load = (f"{len(cells)} run(s) finished, load average {min(loads):.1f}–{max(loads):.1f} at their ends"
            if loads else "no runs finished yet")
    commits = sorted({c.get("commit", "unrecorded") for c in cells}) or [code_commit()]
    length, batch = data.get("max_length", 256), training.get("batch_size", 4)
    return (f"model {cfg.base['model']['source']}, data {Path(data['path']).name} ({len(s.train_records)} training / "
            f"{len(s.validation_records)} validation records; held-out: {s.heldout_source}, "
            f"{len(s.heldout_records) or 'its own file'}{' records' if s.heldout_records else ''}), "
            f"{b.steps} steps × batch {batch} × {length} tokens, seeds {b.seeds}, LR grid "
            f"{[f'{x:g}' for x in b.learning_rates]} on seed(s) {b.tune_seeds} (chosen on the validation split), "
            f"{cfg.threads} torch thread(s) per run, {os.cpu_count()} CPU cores, {load}, "
            f"commit(s) {', '.join(commits)}")


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Held-out loss (± sd over seeds) vs trainable parameters (log when they span 10×) and vs median step time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    done = [r for r in rows if "loss" in r]
    params = [r["trainable_parameters"] for r in done]
    wide = bool(params) and max(params) >= 10 * min(params)  # log scale only when the budgets differ a lot
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=110, sharey=True)
    for ax, key, label in ((axes[0], "trainable_parameters", "trainable parameters" + (" (log scale)" if wide else "")),
                           (axes[1], "step_time_s", "median seconds per step")):
        for r in done:
            sd = 0.0 if math.isnan(r["loss_std"]) else r["loss_std"]
            ax.errorbar(r[key], r["loss"], yerr=sd, fmt="o", capsize=3)
            ax.annotate(r["arm"], (r[key], r["loss"]), xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    if wide:
        axes[0].set_xscale("log")
    else:
        axes[0].xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e6:.3g} M"))
    axes[0].set_ylabel("held-out loss per token (lower is better)")
    fig.suptitle(textwrap.fill(title, 140), fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(compare: Any) -> dict[str, Any]:
    """``summary.json``, ``table.md`` and ``pareto.png`` in the compare's output directory."""
    rows = summarize(compare)
    setup = setup_line(compare, rows)
    table = markdown(rows, compare.config.reference)
    matrix = paired(rows)
    summary = {"setup": setup, "reference": compare.config.reference, "rows": rows, "paired": matrix,
               "complete": all(len(r["seeds"]) + len(r["diverged_seeds"]) == r["seeds_planned"] for r in rows)}
    write_text(compare.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    pairs = (f"\n\nPaired held-out loss difference, row arm − column arm, mean ± sd over their shared seeds "
             f"(negative: the row arm is better; bold: |mean| > 2 sd; a seed count in brackets when under 3):"
             f"\n\n{paired_markdown(matrix)}") if len(matrix) > 1 else ""
    write_text(compare.out / "table.md", f"{setup}.\n\n{table}{pairs}\n")
    plot(rows, compare.out / "pareto.png", setup)
    return summary
