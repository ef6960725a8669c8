"""Methods side by side: SmolLM2-135M (bundled real weights), KJV language modelling, held-out loss.

Every arm trains on the same token budget (steps × batch × length), the same data order per seed, and
is evaluated on the same held-out block (the last 6 % of lines of data/kjv-genesis-exodus.txt, i.e.
the end of Exodus; the rest is the training text). Arms (LoRA arms on a bnb 4-bit NF4 base, bf16 compute):

- ``qlora-all``: LoRA rank R on every linear module (spectra trainer, allocator with every module active);
- ``uniform``: the same at rank U (the ALoRS budget), ``alors``: ALoRS tiers at uniform-U's parameter count;
- ``hybrid-<scorer>``: LoRA rank R on the top 25 % of each module type by ``spectrum``, ``mp``,
  ``grad-norm`` or ``random`` (the random scorer's seed is the run seed);
- ``sgm``: hybrid-spectrum plus cosine-groups (modules with agreeing gradients share one LoRA);
- ``spectrum-25-full``: Spectrum as the reference trains it: full fine-tuning of the spectrum-selected
  25 % modules' weights in a float32 model, no quantization, no LoRA (plain torch loop);
- ``adalora``: peft AdaLoRA on every linear module (init rank U+4 pruned to an average of U), 4-bit base.

Each (arm, seed) runs in its own subprocess (one torch thread by default) so VmHWM is its own. Writes
raw JSON, a markdown table into docs/benchmarks.md (between markers) and a PNG into docs/img/.

    python benchmarks/methods.py --quick      # 1 seed, 8 steps × 4 × 64 tokens: ~10 min on 2 idle cores
    python benchmarks/methods.py              # 3 seeds, 100 steps × 4 × 64 tokens: ~75-90 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import DATA, ROOT, peak_rss_mib, run_measurements, run_subprocess

from spectra_core.atomic import write_text

SCORERS = ("spectrum", "mp", "grad-norm", "random")
ARMS = ("qlora-all", "uniform", "alors", *(f"hybrid-{s}" for s in SCORERS), "sgm", "spectrum-25-full", "adalora")
HELD_OUT_FRACTION = 0.06
MODEL = "bundled:smollm2-135m"


# ----- data ------------------------------------------------------------------------------------------
def split_data(out: Path) -> tuple[Path, Path]:
    """Write the training text (first 94 % of lines) and the held-out text (the rest) into ``out``."""
    lines = [ln for ln in DATA.read_text(encoding="utf-8").splitlines() if ln.strip()]
    cut = round(len(lines) * (1 - HELD_OUT_FRACTION))
    out.mkdir(parents=True, exist_ok=True)
    train, held = out / "train.txt", out / "heldout.txt"
    train.write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
    held.write_text("\n".join(lines[cut:]) + "\n", encoding="utf-8")
    return train, held


# ----- spectra arms ----------------------------------------------------------------------------------
def spectra_config(arm: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The run config of a spectra-trained arm (and of spectrum-25-full's selection)."""
    r, u = args.rank, args.uniform_rank
    cfg: dict[str, Any] = {
        "model": {"source": MODEL},
        "quantizer": {"name": "bnb-nf4"},
        "scorer": {"name": "random", "options": {"seed": seed}},
        "allocator": {"name": "spectrum-top", "options": {"top_fraction": 0.25, "rank": r, "alpha": 2 * r}},
        "data": {"path": str(args.data_dir / "train.txt"), "validation_path": str(args.data_dir / "heldout.txt"),
                 "max_length": args.length},
        "training": {"max_steps": args.steps, "batch_size": args.batch, "learning_rate": args.lr,
                     "warmup_steps": max(1, args.steps // 10), "eval_every": args.steps, "save_every": args.steps,
                     "eval_batches": args.eval_batches,
                     "log_every": 1, "seed": seed, "gradient_checkpointing": False},
        "exporters": [],
        "output_dir": str(out),
    }
    if arm == "qlora-all":
        cfg["allocator"]["options"]["top_fraction"] = 1.0
    elif arm == "uniform":
        cfg["allocator"] = {"name": "alors-tiers", "options": {"mode": "targeted", "use_rslora": False, "tiers": [
            {"name": "all", "quantile": [0, 1], "rank": u, "alpha": 2 * u}]}}
    elif arm == "alors":
        cfg.update(method="alors", scorer={"name": "spectrum"},
                   allocator={"name": "alors-tiers", "options": {"budget_uniform_rank": u}})
    elif arm == "sgm":
        cfg.update(method="sgm", scorer={"name": "spectrum"}, gradient_merger={
            "name": "cosine-groups", "options": {"threshold": 0.0, "max_group_size": 4,
                                                 "calibration_batches": args.calibration_batches}})
    elif arm in ("hybrid-spectrum", "hybrid-mp", "spectrum-25-full"):
        cfg["scorer"] = {"name": "mp" if arm == "hybrid-mp" else "spectrum"}
    elif arm == "hybrid-grad-norm":
        cfg["scorer"] = {"name": "grad-norm", "options": {"calibration_batches": args.calibration_batches}}
    return cfg


def run_spectra(arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from spectra_core.pipeline import Pipeline

    with tempfile.TemporaryDirectory(prefix=f"methods-{arm}-") as tmp:
        run = Pipeline.from_dict(spectra_config(arm, seed, args, Path(tmp) / "run")).train()
        found = run_measurements(run.run_dir)
    return {**found, "trainable_parameters": run.plan.trainable_parameters(), "active_modules": len(run.plan.active())}


def warm_scan_cache(args: argparse.Namespace) -> None:
    """Scan once per weight-only scorer in the parent, so the arms read their scans from the cache and
    their peak RSS measures training (plus grad-norm's calibration, part of that method), not scanning."""
    from spectra_core.pipeline import Pipeline
    from spectra_core.strategies import CalibratedScorer

    done = set()
    for arm in args.arms:
        for seed in args.seeds:
            cfg = spectra_config(arm, seed, args, args.work / "scan-only")
            key = json.dumps(cfg["scorer"], sort_keys=True)
            pipe = Pipeline.from_dict(cfg)
            if key not in done and not isinstance(pipe.scorer, CalibratedScorer):
                done.add(key)
                pipe.scan(progress=False)


# ----- plain torch / peft arms ---------------------------------------------------------------------------
def evaluate(model: Any, examples: list, pad_id: int, batch_size: int, batches: int) -> float:
    """Held-out loss per label token over the first ``batches`` held-out batches, as the spectra trainer
    computes it."""
    import torch

    from spectra_core.data import collate
    from spectra_core.training.loss import causal_lm_loss

    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for i in range(0, min(len(examples), (batches or len(examples)) * batch_size), batch_size):
            loss, n = causal_lm_loss(model, collate(examples[i:i + batch_size], pad_id))
            total, count = total + float(loss), count + n
    model.train()
    return total / count


def plain_loop(model: Any, loss_fn: Any, lr: float, seed: int, args: argparse.Namespace,
               after_step: Any = None) -> dict[str, Any]:
    """AdamW, warmup + cosine, grad clip 1.0, the trainer's data order for ``seed``; loss before/after."""
    import torch
    from transformers import AutoTokenizer

    from spectra_core.calibration import first_batches
    from spectra_core.config import DataConfig, ModelConfig
    from spectra_core.data import load_data
    from spectra_core.models import resolve_model_dir
    from spectra_core.training.optim import lr_factor

    tok = AutoTokenizer.from_pretrained(resolve_model_dir(ModelConfig(source=MODEL)))
    data = load_data(DataConfig(path=str(args.data_dir / "train.txt"), max_length=args.length,
                                validation_path=str(args.data_dir / "heldout.txt")), tok, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start = evaluate(model, data.validation, tok.pad_token_id, args.batch, args.eval_batches)
    times = []
    batches = first_batches(data.train, batch_size=args.batch, seed=seed, pad_id=tok.pad_token_id, n=args.steps)
    for step, batch in enumerate(batches):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(step, warmup=max(1, args.steps // 10), total=args.steps, schedule="cosine")
        loss_fn(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after_step is not None:
            after_step(step)
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    end = evaluate(model, data.validation, tok.pad_token_id, args.batch, args.eval_batches)
    return {"eval_loss_start": start, "eval_loss_end": end,
            "eval_loss_after_rebalance": None, "step_time_s": statistics.median(times[1:] or times),
            "trainable_parameters": sum(p.numel() for p in params)}


def mean_token_loss(model: Any, batch: dict) -> Any:
    from spectra_core.training.loss import causal_lm_loss

    loss, n = causal_lm_loss(model, batch)
    return loss / max(n, 1)


def run_spectrum_full(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Full fine-tuning of the spectrum-selected modules' weights in a float32 model."""
    import torch

    from spectra_core.pipeline import Pipeline
    from spectra_core.registry import get_registry

    pipe = Pipeline.from_dict(spectra_config("spectrum-25-full", seed, args, args.work / "scan-only"))  # plans only
    chosen = {m.name for m in pipe.plan().active()}
    torch.manual_seed(seed)
    model = get_registry().create("quantizer", "none").load(pipe.model_dir())
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in model.named_modules():
        if name in chosen:
            module.weight.requires_grad_(True)
    model.train()
    return {**plain_loop(model, mean_token_loss, args.full_lr, seed, args), "active_modules": len(chosen)}


def run_adalora(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """peft AdaLoRA on every linear module of the 4-bit base; total_step = the run's steps."""
    import torch
    from peft import AdaLoraConfig, get_peft_model

    from spectra_core.config import ModelConfig
    from spectra_core.models import resolve_model_dir
    from spectra_core.registry import get_registry

    base = get_registry().create("quantizer", "bnb-nf4").load(resolve_model_dir(ModelConfig(source=MODEL)))
    base.config.use_cache = False
    s, u = args.steps, args.uniform_rank
    config = AdaLoraConfig(init_r=u + 4, target_r=u, lora_alpha=2 * u, target_modules="all-linear", lora_dropout=0.0,
                           total_step=s, tinit=max(1, s // 5), tfinal=max(1, s // 5), deltaT=max(1, s // 20),
                           task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    model.train()

    def loss_fn(m: Any, batch: dict) -> Any:  # the model's own loss: adds AdaLoRA's orthogonality term
        return m(**batch).loss

    def after_step(step: int) -> None:
        model.base_model.update_and_allocate(step)

    found = plain_loop(model, loss_fn, args.lr, seed, args, after_step)
    adapted = sum(1 for m in model.modules() if "default" in getattr(m, "lora_E", {}))
    return {**found, "active_modules": adapted}


def run_arm(arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if arm == "spectrum-25-full":
        found = run_spectrum_full(seed, args)
    elif arm == "adalora":
        found = run_adalora(seed, args)
    else:
        found = run_spectra(arm, seed, args)
    return {"arm": arm, "seed": seed, **found, "peak_rss_mib": peak_rss_mib(), "wall_s": time.perf_counter() - started}


# ----- report ----------------------------------------------------------------------------------------
def final_loss(r: dict[str, Any]) -> float:
    """The deliverable's held-out loss: after the rebalancer where one ran (alors), else after training."""
    return r["eval_loss_after_rebalance"] if r["eval_loss_after_rebalance"] is not None else r["eval_loss_end"]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm: held-out loss mean ± std, paired difference to hybrid-random, costs."""
    rows = []
    random_by_seed = {r["seed"]: final_loss(r) for r in results if r["arm"] == "hybrid-random"}
    for arm in dict.fromkeys(r["arm"] for r in results):
        runs = [r for r in results if r["arm"] == arm]
        loss, loss_sd = mean_std([final_loss(r) for r in runs])
        diffs = [final_loss(r) - random_by_seed[r["seed"]] for r in runs if r["seed"] in random_by_seed]
        vs_random = mean_std(diffs) if diffs and arm != "hybrid-random" else None
        rows.append({"arm": arm, "seeds": len(runs), "loss": loss, "loss_std": loss_sd,
                     "start": statistics.fmean(r["eval_loss_start"] for r in runs), "vs_random": vs_random,
                     "trainable_parameters": runs[0]["trainable_parameters"],
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                     "step_time_s": statistics.median(r["step_time_s"] for r in runs)})
    return rows


def _pm(mean: float, sd: float, fmt: str = "{:.4f}") -> str:
    """'mean ± sd' (the sd unsigned even where the mean shows its sign)."""
    return fmt.format(mean) + ("" if math.isnan(sd) else " ± " + fmt.replace("+", "").format(sd))


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| arm | held-out loss | Δ vs hybrid-random (paired) | loss at step 0 | trainable params | "
             "peak RSS (MiB) | s / step |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        vs = "–" if r["vs_random"] is None else _pm(*r["vs_random"], fmt="{:+.4f}")
        lines.append(f"| {r['arm']} | {_pm(r['loss'], r['loss_std'])} | {vs} | {r['start']:.4f} | "
                     f"{r['trainable_parameters']:,} | {r['peak_rss_mib']:.0f} | {r['step_time_s']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Held-out loss (± sd over seeds) vs trainable parameters. An arm far above the rest (more than 0.5
    over the median loss) is drawn on the top edge with its value, so the others stay readable; labels
    of arms with equal parameter counts are stacked instead of overlapping."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    median = statistics.median(r["loss"] for r in rows)
    inliers = [r for r in rows if r["loss"] <= median + 0.5] or rows
    low = min(r["loss"] - _sd(r) for r in inliers)
    high = max(r["loss"] + _sd(r) for r in inliers)
    pad = 0.08 * (high - low or 1.0)
    top = high + 3 * pad
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    ax.set_ylim(low - pad, top)
    gap = 0.045 * (top - low + pad)
    by_x: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_x.setdefault(r["trainable_parameters"], []).append(r)
    for x, group in by_x.items():
        label_y = -math.inf
        for r in sorted(group, key=lambda r: min(r["loss"], top)):
            shown = min(r["loss"], top - pad / 2)
            off_scale = r["loss"] > top
            ax.errorbar(x, shown, yerr=0 if off_scale else _sd(r), fmt="^" if off_scale else "o", capsize=3)
            label_y = max(shown, label_y + gap)
            text = f"{r['arm']} ({r['loss']:.2f}, off scale)" if off_scale else r["arm"]
            ax.annotate(text, (x, shown), xytext=(x * 1.12, label_y), fontsize=8, va="center",
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6})
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("held-out loss per token (lower is better)")
    ax.set_title(textwrap.fill(title, 95), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _sd(row: dict[str, Any]) -> float:
    return 0.0 if math.isnan(row["loss_std"]) else row["loss_std"]


def write_docs(section: str, body: str, doc: Path) -> None:
    """Replace the text between ``<!-- methods:SECTION:start/end -->`` in ``doc`` (appended if absent)."""
    start, end = f"<!-- methods:{section}:start -->", f"<!-- methods:{section}:end -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_text(doc, text)


# ----- main ------------------------------------------------------------------------------------------
def machine() -> str:
    """The CPU model and the commit measured, for the report's setup line."""
    import subprocess

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown CPU")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return f"{cpu}, commit {commit.stdout.strip() or 'unknown'}"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 8 steps of 4 × 64 tokens (~10-20 min).")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--calibration-batches", type=int, help="grad-norm and sgm calibration (quick 2, full 8).")
    ap.add_argument("--eval-batches", type=int, help="held-out batches evaluated (quick 4, full: all 20).")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=64, help="tokens per sequence.")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank of qlora-all, hybrid-* and sgm.")
    ap.add_argument("--uniform-rank", type=int, default=8, help="Rank of uniform; ALoRS and AdaLoRA budgets.")
    ap.add_argument("--lr", type=float, default=3e-4, help="LoRA / AdaLoRA learning rate.")
    ap.add_argument("--full-lr", type=float, default=5e-5, help="spectrum-25-full learning rate.")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per arm.")
    ap.add_argument("--jobs", type=int, default=2, help="arms run at the same time.")
    ap.add_argument("--out", type=Path, help="raw JSON (default benchmarks/methods-results[-quick].json)")
    ap.add_argument("--no-docs", action="store_true", help="do not write benchmarks.md and the PNG.")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="docs folder: benchmarks.md and img/ go here.")
    ap.add_argument("--from-json", type=Path, help="only re-render the table and PNG from a results JSON.")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-methods")
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.steps = args.steps or (8 if args.quick else 100)
    args.calibration_batches = args.calibration_batches or (2 if args.quick else 8)
    args.eval_batches = args.eval_batches or (4 if args.quick else None)
    return args


def main() -> None:
    args = parse()
    if args.arm:
        args.result.write_text(json.dumps(run_arm(args.arm, args.seed, args)))
        return
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        report(saved["mode"], saved["setup"], summarize([r for r in saved["results"] if "error" not in r]), args.docs)
        return
    mode = "quick" if args.quick else "full"
    args.data_dir = args.work / "data"
    split_data(args.data_dir)
    logs = args.work / f"logs-{mode}"
    logs.mkdir(parents=True, exist_ok=True)
    common = [f"--steps={args.steps}", f"--calibration-batches={args.calibration_batches}",
              *([f"--eval-batches={args.eval_batches}"] if args.eval_batches else []), f"--batch={args.batch}",
              f"--length={args.length}", f"--rank={args.rank}", f"--uniform-rank={args.uniform_rank}",
              f"--lr={args.lr}", f"--full-lr={args.full_lr}", f"--threads={args.threads}",
              f"--data-dir={args.data_dir}", f"--work={args.work}"]
    warm_scan_cache(args)
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    out = args.out or ROOT / "benchmarks" / f"methods-results{'-quick' if args.quick else ''}.json"
    started, load_before, host = time.perf_counter(), os.getloadavg(), machine()
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def save(complete: bool) -> tuple[str, list[dict[str, Any]]]:
        """Write the raw JSON (after every arm, so an interrupted run keeps what it measured)."""
        setup = (f"SmolLM2-135M-Instruct (bundled), KJV Genesis+Exodus, {args.steps} steps × batch {args.batch} × "
                 f"{args.length} tokens = {args.steps * args.batch * args.length:,} training tokens per arm, "
                 f"seeds {args.seeds}, {os.cpu_count()} CPU cores, {args.threads} torch thread(s) per arm, "
                 f"{args.jobs} arm(s) at a time, load average {load_before[0]:.1f} → {os.getloadavg()[0]:.1f}, "
                 f"{(time.perf_counter() - started) / 60:.0f} min wall, {host}")
        rows = summarize([r for r in results if "error" not in r])
        write_text(out, json.dumps({"mode": mode, "complete": complete, "setup": setup,
                                    "args": {k: str(v) for k, v in vars(args).items()},
                                    "wall_s": time.perf_counter() - started, "rows": rows, "results": results},
                                   indent=2) + "\n")
        return setup, rows

    def one(job: tuple[str, int]) -> None:
        arm, seed = job
        try:
            result = run_subprocess(__file__, [f"--arm={arm}", f"--seed={seed}", *common], threads=args.threads,
                                    log=logs / f"{arm}-seed{seed}.log")
            print(f"{arm} seed {seed}: loss {final_loss(result):.4f}, {result['wall_s']:.0f} s", flush=True)
        except RuntimeError as exc:  # one failing arm must not lose the others' results
            print(f"{arm} seed {seed}: FAILED\n{exc}", flush=True)
            result = {"arm": arm, "seed": seed, "error": str(exc)[-2000:]}
        with lock:
            results.append(result)
            save(complete=False)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, jobs))
    order = {job: i for i, job in enumerate(jobs)}
    results.sort(key=lambda r: order[(r["arm"], r["seed"])])
    setup, rows = save(complete=True)
    if args.no_docs:
        print(setup + "\n\n" + markdown(rows))
    else:
        report(mode, setup, rows, args.docs)


def report(mode: str, setup: str, rows: list[dict[str, Any]], docs: Path) -> None:
    """Print the table; write it into ``docs``/benchmarks.md and the plot into ``docs``/img/."""
    table = markdown(rows)
    print(setup + "\n\n" + table)
    png = f"methods{'-quick' if mode == 'quick' else ''}.png"
    plot(rows, docs / "img" / png, f"{mode} run: {setup.split(', seeds')[0]}")
    write_docs(mode, f"{setup}.\n\n{table}\n\n![held-out loss vs trainable parameters ({mode} run)](img/{png})",
               docs / "benchmarks.md")


if __name__ == "__main__":
    main()
