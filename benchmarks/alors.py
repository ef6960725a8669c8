"""ALoRS vs uniform LoRA at the same trainable-parameter budget on SmolLM2-135M 4-bit (bundled).

Both arms: bnb-nf4 base, KJV Genesis/Exodus text, the same steps, batch, LR, seed and gradient
checkpointing. ``uniform``: LoRA rank r (alpha 2r) on every target. ``alors``: the method's SNR
tiers (top 25 % / next 25 % of each type, ranks 16:4, rest frozen) with the ranks solved to the
uniform arm's parameter count, then the alors-resize rebalancer after training. Each arm runs in
its own subprocess; the parent prints held-out loss, peak RSS and time per step side by side.

    .venv/bin/python benchmarks/alors.py                 # ~4 minutes on 2 cores
    .venv/bin/python benchmarks/alors.py --steps 100 --json results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, peak_rss_mib, run_measurements, run_subprocess


def arm_config(arm: str, args: argparse.Namespace, out: Path) -> dict:
    config = {
        "quantizer": {"name": "bnb-nf4"},
        "scorer": {"name": "spectrum"},
        "model": {"source": "bundled:smollm2-135m"},
        "data": {"path": str(DATA), "max_length": args.max_length, "validation_fraction": 0.05},
        "training": {"max_steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr,
                     "warmup_steps": max(1, args.steps // 10), "eval_every": args.steps, "eval_batches":
                     args.eval_batches, "save_every": args.steps, "log_every": 1, "seed": args.seed,
                     "gradient_checkpointing": True},
        "exporters": [],
        "output_dir": str(out),
    }
    if arm == "alors":  # the method's defaults, ranks solved to the uniform arm's budget
        config["method"] = "alors"
        config["allocator"] = {"name": "alors-tiers", "options": {"budget_uniform_rank": args.rank}}
    else:  # one tier over everything: plain LoRA, alpha 2r, no rebalancer
        config["allocator"] = {"name": "alors-tiers", "options": {
            "mode": "targeted", "use_rslora": False,
            "tiers": [{"name": "all", "quantile": [0, 1], "rank": args.rank, "alpha": 2 * args.rank}]}}
    return config


def run_arm(arm: str, args: argparse.Namespace) -> dict:
    """Train one arm in this process; return its measurements."""
    import torch

    from spectra_core.pipeline import Pipeline

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix=f"alors-bench-{arm}-") as tmp:
        pipe = Pipeline.from_dict(arm_config(arm, args, Path(tmp) / "run"))
        started = time.perf_counter()
        run = pipe.train()
        wall = time.perf_counter() - started
        found = run_measurements(run.run_dir)
    ranks = sorted({m.rank for m in run.plan.active()})
    return {
        "arm": arm,
        "trainable_parameters": run.plan.trainable_parameters(),
        "active_modules": len(run.plan.active()),
        "ranks": ranks,
        "eval_loss_start": found["eval_loss_start"],
        "eval_loss_end": found["eval_loss_end"],
        "eval_loss_after_rebalance": found["eval_loss_after_rebalance"],
        "rebalance_changes": sum(c.field in ("tier", "rank") for c in run.plan.history),
        "step_time_s_median": found["step_time_s"],
        "peak_rss_mib": peak_rss_mib(),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rank", type=int, default=8, help="Uniform rank; ALoRS gets the same parameter budget.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per arm (arms run one at a time).")
    parser.add_argument("--arms", nargs="+", default=["uniform", "alors"], choices=["uniform", "alors"])
    parser.add_argument("--json", type=Path, help="Write the results here.")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        args.result.write_text(json.dumps(run_arm(args.arm, args)))
        return
    results = []
    passthrough = [f"--steps={args.steps}", f"--rank={args.rank}", f"--batch-size={args.batch_size}",
                   f"--max-length={args.max_length}", f"--lr={args.lr}", f"--eval-batches={args.eval_batches}",
                   f"--seed={args.seed}", f"--threads={args.threads}"]
    for arm in args.arms:
        results.append(run_subprocess(__file__, ["--arm", arm, *passthrough], threads=args.threads))
        print(f"{arm}: done in {results[-1]['wall_s']:.0f} s", file=sys.stderr)
    rows = [("trainable parameters", "trainable_parameters", "{:,}"), ("active modules", "active_modules", "{}"),
            ("ranks", "ranks", "{}"), ("held-out loss, start", "eval_loss_start", "{:.4f}"),
            ("held-out loss, end", "eval_loss_end", "{:.4f}"),
            ("held-out loss, after rebalance", "eval_loss_after_rebalance", "{:.4f}"),
            ("tier/rank changes", "rebalance_changes", "{}"), ("time per step (median)", "step_time_s_median",
                                                              "{:.2f} s"),
            ("peak RSS", "peak_rss_mib", "{:.0f} MiB"), ("training wall time", "wall_s", "{:.0f} s")]
    print(f"SmolLM2-135M bnb-nf4, {args.steps} steps x batch {args.batch_size} x {args.max_length} tokens, "
          f"budget = uniform rank {args.rank}")
    print("| metric | " + " | ".join(r["arm"] for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for label, key, fmt in rows:
        cells = ["-" if r[key] is None else fmt.format(r[key]) for r in results]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
