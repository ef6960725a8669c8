"""The short summary a finished `spectra train` ends with: what trained, held-out loss, time, memory, outputs."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def peak_memory() -> str:
    """Peak resident memory of this process (and peak CUDA memory when a GPU was used)."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    text = f"{rss / 2**30:.2f} GiB RSS"
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
        text += f", {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB CUDA"
    return text


def train_summary(run: Any, exports: dict[str, Path], wall_seconds: float) -> list[str]:
    """The summary lines: modules and parameters, held-out loss before -> after, wall time, peak memory, paths."""
    from spectra_core.training.metrics import read_metrics

    plan = run.plan
    lines = ["--- summary ---",
             f"trained: {len(plan.active())} of {len(plan.modules)} target modules (LoRA on {len(plan.injected())}"
             + (f", {len(plan.groups())} shared groups" if plan.groups() else "")
             + f"), {plan.trainable_parameters():,} trainable parameters"]
    evals = [r for r in read_metrics(run.run_dir / "metrics.jsonl") if "eval_loss" in r]
    if evals:
        lines.append(f"held-out loss: {evals[0]['eval_loss']:.4f} (step {evals[0]['step']}) -> "
                     f"{evals[-1]['eval_loss']:.4f} (step {evals[-1]['step']})")
    lines += [f"wall time: {_duration(wall_seconds)}; peak memory: {peak_memory()}",
              f"run directory: {run.run_dir}",
              f"adapter (PEFT): {run.run_dir / 'final'}",
              f"metrics: {run.run_dir / 'metrics.jsonl'}"]
    lines += [f"export {name}: {path}" for name, path in exports.items()]
    return lines
