"""Depth-aware selection: hybrid-25 with a backward-depth budget vs plain hybrid-25 vs QLoRA-all.

SmolLM2-135M (bundled, bnb 4-bit NF4), KJV Genesis+Exodus, the spectra trainer for every arm, same
data order, steps, batch, length and learning rate:

- ``qlora-all``: LoRA rank R on every linear module;
- ``hybrid-spectrum``: rank R on the top 25 % of each module type by Spectrum SNR (targeted);
- ``hybrid-depth``: the same count per type and rank (so the same trainable parameters), chosen by SNR
  only among the last ``--backward-layers`` layers (``allocator.options.backward_layers``), so backward
  stops there.

Each (arm, seed) runs in its own subprocess with one torch thread. Measured: median optimizer-step time
(first step left out), peak RSS, and the peak RSS *above the loaded model* (VmHWM is reset right after
the quantizer loads the base; peak minus the RSS at that moment), held-out loss after training. Prints
the issue-14 ratios with the load average; writes JSON with ``--out``.

    python benchmarks/depth.py --steps 40 --length 64 --eval-batches 8 --out benchmarks/depth-results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import DATA, peak_rss_mib, run_measurements, run_subprocess

from spectra_core.spectral.types import layer_index

ARMS = ("qlora-all", "hybrid-spectrum", "hybrid-depth")
TARGETS = {"step_time": 0.65, "above_model_peak": 0.6, "loss_vs_hybrid": 1.01}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def config(arm: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    options: dict[str, Any] = {"top_fraction": 1.0 if arm == "qlora-all" else 0.25, "rank": args.rank,
                               "alpha": 2 * args.rank}
    if arm == "hybrid-depth":
        options["backward_layers"] = args.backward_layers
    return {
        "model": {"source": "bundled:smollm2-135m"},
        "quantizer": {"name": "bnb-nf4"},
        "scorer": {"name": "spectrum"},
        "allocator": {"name": "spectrum-top", "options": options},
        "data": {"path": str(DATA), "max_length": args.length, "validation_fraction": 0.04},
        "training": {"max_steps": args.steps, "batch_size": args.batch, "learning_rate": args.lr,
                     "warmup_steps": max(1, args.steps // 10), "eval_every": args.steps, "save_every": args.steps,
                     "eval_batches": args.eval_batches, "log_every": 1, "seed": seed},
        "exporters": [],
        "output_dir": str(out),
    }


def run_arm(arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One arm in this process; the quantizer records RSS at load and resets the peak there."""
    import torch

    from spectra_core.pipeline import Pipeline

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix=f"depth-{arm}-") as tmp:
        probe = Pipeline.from_dict(config(arm, seed, args, Path(tmp) / "run"))
        base_cls = type(probe.quantizer)

        class MeasuredLoad(base_cls):  # the configured quantizer, plus a memory mark after loading
            loaded_rss_mib = float("nan")

            def load(self, *a: Any, **kw: Any) -> Any:
                model = super().load(*a, **kw)
                MeasuredLoad.loaded_rss_mib = rss_mib()
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                return model

        pipe = Pipeline(probe.config, quantizer=MeasuredLoad(probe.quantizer.options))
        plan = pipe.plan()
        run = pipe.train(plan)
        found = run_measurements(run.run_dir)
    peak = peak_rss_mib()
    return {**found, "arm": arm, "seed": seed, "trainable_parameters": plan.trainable_parameters(),
            "active_modules": len(plan.active()),
            "lowest_active_layer": min(layer_index(m.name) for m in plan.active()),
            "peak_rss_after_load_mib": peak, "loaded_model_rss_mib": MeasuredLoad.loaded_rss_mib,
            "above_model_peak_mib": peak - MeasuredLoad.loaded_rss_mib}


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for arm in ARMS:
        rows = [r for r in results if r["arm"] == arm]
        out[arm] = {k: statistics.mean(r[k] for r in rows) for k in
                    ("trainable_parameters", "step_time_s", "above_model_peak_mib", "peak_rss_after_load_mib",
                     "eval_loss_start", "eval_loss_end", "lowest_active_layer")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--backward-layers", type=int, default=10)
    ap.add_argument("--eval-batches", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.arm:
        args.result.write_text(json.dumps(run_arm(args.arm, args.seed, args)))
        return
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    passthrough = [f"--steps={args.steps}", f"--batch={args.batch}", f"--length={args.length}", f"--rank={args.rank}",
                   f"--lr={args.lr}", f"--backward-layers={args.backward_layers}", f"--eval-batches={args.eval_batches}"]
    logs = Path(tempfile.mkdtemp(prefix="depth-logs-"))
    results = [run_subprocess(__file__, ["--arm", arm, f"--seed={seed}", *passthrough], threads=1,
                              log=logs / f"{arm}-{seed}.log")
               for seed in args.seeds for arm in ARMS]
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    s = summarise(results)
    q, h, d = s["qlora-all"], s["hybrid-spectrum"], s["hybrid-depth"]
    ratios = {"step_time": d["step_time_s"] / q["step_time_s"],
              "above_model_peak": d["above_model_peak_mib"] / q["above_model_peak_mib"],
              "loss_vs_hybrid": d["eval_loss_end"] / h["eval_loss_end"],
              "hybrid_step_time": h["step_time_s"] / q["step_time_s"],
              "hybrid_above_model_peak": h["above_model_peak_mib"] / q["above_model_peak_mib"],
              "params_vs_hybrid": d["trainable_parameters"] / h["trainable_parameters"]}
    print(f"load average (1/5/15 min): before {' '.join(load_before)}, after {' '.join(load_after)}; "
          f"{os.cpu_count()} cores, 1 torch thread per arm")
    print(f"{'':26}" + "".join(f"{a:>17}" for a in ARMS))
    for key in q:
        print(f"{key:26}" + "".join(f"{s[a][key]:>17.5g}" for a in ARMS))
    for key, value in ratios.items():
        target = TARGETS.get(key)
        verdict = "" if target is None else ("  (target ≤ %.2f: %s)" % (target, "met" if value <= target else "MISSED"))
        print(f"ratio {key:24}{value:>10.3f}{verdict}")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                                 if k not in ("arm", "seed", "result")},
                                        "load_average": {"before": load_before, "after": load_after},
                                        "results": results, "summary": s, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
