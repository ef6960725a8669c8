"""SGM vs hybrid at the same LoRA rank on SmolLM2-135M (4-bit NF4, bundled), KJV Genesis+Exodus.

Each arm trains in its own subprocess (so peak RSS is its own) with the same data, seed, steps and
rank; reported side by side: trainable LoRA parameters, held-out loss before/after, peak RSS, mean
time per optimizer step, wall time. Default: 30 steps per arm, a few minutes on 2 CPU cores.

    python benchmarks/sgm.py [--steps 30] [--rank 16] [--threads 1] [--out runs/bench-sgm]

``--threads`` sets torch's threads per arm (OMP_NUM_THREADS). The default 1 keeps the timing sane on a
shared 2-core box, where 2-thread torch processes slow down 15–20× as soon as anything else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, ROOT, arm_env, peak_rss_mib

ARMS = ("hybrid", "sgm")


def arm_config(arm: str, out: Path, steps: int, rank: int) -> dict:
    """The run config of one arm: the method's defaults, same rank, data, schedule and seed."""
    cfg = {
        "method": arm,
        "model": {"source": "bundled:smollm2-135m"},
        "allocator": {"name": "spectrum-top", "options": {"rank": rank, "alpha": 2 * rank}},
        "data": {"path": str(DATA), "max_length": 128, "validation_fraction": 0.05},
        "training": {"max_steps": steps, "batch_size": 4, "learning_rate": 3e-4, "warmup_steps": 3,
                     "eval_every": steps, "eval_batches": 16, "save_every": steps, "log_every": 1, "seed": 0},
        "exporters": [],
        "output_dir": str(out / arm),
    }
    if arm == "sgm":
        cfg["gradient_merger"] = {"name": "cosine-groups", "options": {"threshold": 0.0, "max_group_size": 4,
                                                                       "calibration_batches": 8}}
    return cfg


def run_arm(arm: str, out: Path, steps: int, rank: int) -> dict:
    """Train one arm in this process; return its measurements."""
    import torch

    from spectra_core.pipeline import Pipeline

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.perf_counter()
    run = Pipeline.from_dict(arm_config(arm, out, steps, rank)).train(overwrite=True)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    step_times = [r["step_time_s"] for r in records if "step_time_s" in r][1:]  # first step warms up
    plan = run.plan
    return {
        "arm": arm, "steps": steps, "rank": rank,
        "trainable_parameters": plan.trainable_parameters(),
        "trained_modules": len(plan.active()), "groups": len(plan.groups()),
        "held_out_before": evals[0], "held_out_after": evals[-1],
        "peak_rss_mib": peak_rss_mib(),
        "time_per_step_s": sum(step_times) / max(len(step_times), 1),
        "wall_s": wall,
    }


def table(results: list[dict]) -> str:
    hybrid, sgm = results
    rows = [("trainable LoRA parameters", "trainable_parameters", "{:,}"),
            ("trained modules", "trained_modules", "{}"), ("shared-LoRA groups", "groups", "{}"),
            ("held-out loss, step 0", "held_out_before", "{:.4f}"), ("held-out loss, end", "held_out_after", "{:.4f}"),
            ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"), ("time per step (s)", "time_per_step_s", "{:.2f}"),
            ("wall time (s)", "wall_s", "{:.0f}")]
    lines = ["| | hybrid | sgm | sgm / hybrid |", "|---|---:|---:|---:|"]
    for label, key, fmt in rows:
        ratio = f"{sgm[key] / hybrid[key]:.3f}" if hybrid[key] else "–"
        lines.append(f"| {label} | {fmt.format(hybrid[key])} | {fmt.format(sgm[key])} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-sgm")
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # internal: run one arm, print JSON
    args = ap.parse_args()
    if args.arm:
        print("RESULT " + json.dumps(run_arm(args.arm, args.out, args.steps, args.rank)), flush=True)
        return
    results = []
    for arm in ARMS:
        proc = subprocess.run([sys.executable, __file__, "--arm", arm, "--steps", str(args.steps),
                               "--rank", str(args.rank), "--out", str(args.out)],
                              capture_output=True, text=True, env=arm_env(args.threads))
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"arm {arm} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    h, s = results
    print(f"\nparameters: {s['trainable_parameters'] / h['trainable_parameters']:.3f}× hybrid (target ≤ 0.5); "
          f"held-out loss: {100 * (s['held_out_after'] / h['held_out_after'] - 1):+.2f} % (target ≤ +1 %)")


if __name__ == "__main__":
    main()
