"""One compare job in its own interpreter, so its peak memory is its own:

    python -m spectra_core.compare.worker SPEC.json RESULT.json

``SPEC.json`` holds ``{"job": "cell" | "base-memory" | "params", "config": RUN_CONFIG, ...}``; the result
is written to ``RESULT.json`` (atomically) only when the job succeeds. A worker whose compare process
dies (even by SIGKILL) exits within seconds instead of training on for nobody.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..errors import SpectraError, TrainingError


def peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cuda_peak_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def code_commit() -> str:
    """The git commit of the spectra_core code running (``unknown`` outside a git checkout)."""
    import subprocess

    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                           capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


def _metrics(run_dir: Path) -> dict[str, Any]:
    """Held-out loss at step 0, after training and after a rebalancer (if one ran); median step time
    with the first (warm-up) step left out."""
    from ..training.metrics import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl")
    evals = [r for r in records if "eval_loss" in r]
    steps = [r["step_time_s"] for r in records if "step_time_s" in r]
    after = next((r["eval_loss"] for r in evals if r.get("after") == "rebalance"), None)
    end = next(r["eval_loss"] for r in reversed(evals) if "after" not in r)
    return {"heldout_loss_start": evals[0]["eval_loss"], "heldout_loss_trained": end,
            "heldout_loss": after if after is not None else end, "step_time_s": statistics.median(steps[1:] or steps),
            "steps": len(steps)}


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (arm, LR, seed); held-out loss from the trainer's evaluations, validation loss after."""
    from ..data import tokenize_records, load_records
    from ..pipeline import Pipeline
    from ..training.loss import summed_eval_loss

    started = time.perf_counter()
    pipe = Pipeline.from_dict(spec["config"])
    try:
        run = pipe.train(overwrite=True)
    except TrainingError as exc:  # a diverged run (NaN loss) is a result: this LR does not train
        if "NaN" not in exc.message:
            raise
        return {"diverged": exc.message, "validation_loss": None, "wall_s": time.perf_counter() - started,
                "loadavg": os.getloadavg()[0], "commit": code_commit()}
    model, cfg = run.model, pipe.config
    tokenizer = run.tokenizer()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    val, _ = tokenize_records(load_records(spec["validation_path"]), tokenizer, cfg.data, spec["validation_path"])
    total, count = summed_eval_loss(model, val, tokenizer.pad_token_id, batch_size=cfg.training.batch_size,
                                    max_batches=cfg.training.eval_batches,
                                    device=next(model.parameters()).device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {**_metrics(run.run_dir), "validation_loss": total / max(count, 1.0), "trainable_parameters": trainable,
            "plan_parameters": run.plan.trainable_parameters(), "active_modules": len(run.plan.active()),
            "peak_rss_mib": peak_rss_mib(), "cuda_peak_mib": _cuda_peak_mib(),
            "wall_s": time.perf_counter() - started, "loadavg": os.getloadavg()[0], "commit": code_commit()}


def run_base_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of loading the frozen base as a cell does (the floor 'above the model' is measured from)."""
    import torch

    from ..pipeline import Pipeline
    from ..training.modeling import load_base

    pipe = Pipeline.from_dict(spec["config"])
    model = load_base(pipe.config, pipe.quantizer, pipe.model_dir())
    if torch.cuda.is_available():
        model.to("cuda")
    return {"peak_rss_mib": peak_rss_mib(), "cuda_peak_mib": _cuda_peak_mib()}


def run_params(spec: dict[str, Any]) -> dict[str, Any]:
    """The plan's trainable parameters, or the solved option value when ``target`` is given."""
    from ..pipeline import Pipeline
    from .solve import PlanCounter, default_knob

    pipe = Pipeline.from_dict(spec["config"])
    if spec.get("target") is None:
        return {"parameters": PlanCounter(pipe, None).count()}
    knob = spec.get("knob") or default_knob(set(pipe.config.allocator.options.model_dump()))
    counter = PlanCounter(pipe, knob)
    value, found = counter.solve(int(spec["target"]), spec["tolerance"])
    return {"parameters": found, "knob": knob, "value": value, "options": counter.changes(value)}


JOBS = {"cell": run_cell, "base-memory": run_base_memory, "params": run_params}
ORPHAN_EXIT = 3  # the exit status of a worker whose compare process died


def exit_when_orphaned(interval_s: float = 1.0) -> None:
    """Exit (status ``ORPHAN_EXIT``) as soon as this process's parent is gone: it is then re-parented."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(ORPHAN_EXIT)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    spec_path, result_path = map(Path, argv)
    exit_when_orphaned()
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    import torch

    torch.set_num_threads(int(spec.get("threads", 1)))
    try:
        result = JOBS[spec["job"]](spec)
    except SpectraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_text(result_path, json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
