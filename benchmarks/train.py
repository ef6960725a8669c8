"""Benchmark: hybrid-25 (LoRA on the top-25 % SNR modules per type, spectra trainer) vs QLoRA on all
linear modules (plain peft loop), SmolLM2-135M in 4-bit NF4, same rank, batch, steps and data.

Each arm runs in its own subprocess (clean peak RSS). Prints a side-by-side table and ratios; writes
JSON with ``--out``.

    python benchmarks/train.py --steps 12 --out benchmarks/train-results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, peak_rss_mib, run_measurements

ARMS = ("hybrid-25", "qlora-all")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _config(args: argparse.Namespace, out: Path) -> dict:
    return {
        "model": {"source": "bundled:smollm2-135m"},
        "quantizer": {"name": "bnb-nf4", "options": {"compute_dtype": "bfloat16"}},
        "scorer": {"name": "spectrum"},
        "allocator": {"name": "spectrum-top", "options": {"top_fraction": 0.25, "rank": args.rank,
                                                          "alpha": 2 * args.rank}},
        "data": {"path": str(DATA), "max_length": args.length, "validation_fraction": 0.02},
        "training": {"max_steps": args.steps, "batch_size": args.batch, "learning_rate": 2e-4, "warmup_steps": 2,
                     "eval_every": args.steps, "eval_batches": args.eval_batches, "save_every": args.steps,
                     "log_every": 1, "seed": 0},
        "output_dir": str(out),
    }


def run_hybrid(args: argparse.Namespace) -> dict:
    """The spectra trainer: chunked loss, no graph below the lowest adapted layer."""
    from spectra_core.pipeline import Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline.from_dict(_config(args, Path(tmp) / "run"))
        plan = pipe.plan()
        rss_before = _rss_mib()
        found = run_measurements(pipe.train(plan).run_dir)
    return {"arm": "hybrid-25", "trainable_params": plan.trainable_parameters(), "step_time_s": found["step_time_s"],
            "eval_loss_before": found["eval_loss_start"], "eval_loss_after": found["eval_loss_end"],
            "peak_rss_mib": peak_rss_mib(), "rss_before_train_mib": rss_before, "active_modules": len(plan.active())}


def run_qlora_all(args: argparse.Namespace) -> dict:
    """Plain peft QLoRA on every linear module: full logits, HF loss, standard loop."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from spectra_core.quantized import guard_bnb_cpu_repack
    from spectra_core.config import DataConfig, ModelConfig
    from spectra_core.data import collate, load_data
    from spectra_core.models import resolve_model_dir

    torch.manual_seed(0)
    model_dir = resolve_model_dir(ModelConfig(source="bundled:smollm2-135m"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    data = load_data(DataConfig(path=str(DATA), max_length=args.length, validation_fraction=0.02), tok)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map="cpu", use_safetensors=True)
    guard_bnb_cpu_repack(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear",
                                             lora_dropout=0, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    pad = tok.pad_token_id

    def evaluate() -> float:
        model.eval()
        total = n = 0.0
        with torch.no_grad():
            for i in range(args.eval_batches):
                batch = collate(data.validation[i * args.batch:(i + 1) * args.batch], pad)
                if batch["input_ids"].numel() == 0:
                    break
                out = model(**batch)
                k = int((batch["labels"][:, 1:] != -100).sum())
                total, n = total + float(out.loss) * k, n + k
        model.train()
        return total / n

    before = evaluate()
    rss_before = _rss_mib()
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0)).tolist()
    times = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        batch = collate([data.train[i] for i in order[step * args.batch:(step + 1) * args.batch]], pad)
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"arm": "qlora-all", "trainable_params": trainable, "step_time_s": statistics.median(times[1:]),
            "eval_loss_before": before, "eval_loss_after": evaluate(), "peak_rss_mib": peak_rss_mib(),
            "rss_before_train_mib": rss_before, "active_modules": 210}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", choices=ARMS)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per arm (1: robust on a shared box)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.arm:
        import torch

        torch.set_num_threads(args.threads)
        result = run_hybrid(args) if args.arm == "hybrid-25" else run_qlora_all(args)
        print("RESULT " + json.dumps(result))
        return
    results = {}
    passthrough = [f"--steps={args.steps}", f"--batch={args.batch}", f"--length={args.length}",
                   f"--rank={args.rank}", f"--eval-batches={args.eval_batches}", f"--threads={args.threads}"]
    for arm in ARMS:
        proc = subprocess.run([sys.executable, __file__, "--arm", arm, *passthrough], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{arm} failed:\n{proc.stderr[-4000:]}")
        results[arm] = json.loads(line[len("RESULT "):])
    h, q = results["hybrid-25"], results["qlora-all"]
    ratios = {
        "peak_rss": h["peak_rss_mib"] / q["peak_rss_mib"],
        "step_time": h["step_time_s"] / q["step_time_s"],
        "trainable_params": h["trainable_params"] / q["trainable_params"],
    }
    print(f"{'':24}{'hybrid-25':>14}{'qlora-all':>14}")
    for key in ("active_modules", "trainable_params", "step_time_s", "peak_rss_mib",
                "eval_loss_before", "eval_loss_after"):
        print(f"{key:24}{h[key]:>14.4g}{q[key]:>14.4g}")
    for key, value in ratios.items():
        print(f"ratio {key:18}{value:>14.3f}")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results,
                                        "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
