"""The GPU check: the ``cuda`` tests, hybrid-25 vs QLoRA-all training cost, and the GPU scan, in one run.

On a lent CUDA machine (the launcher installs the wheels carried in ``.whl/`` first)::

    bash benchmarks/gpu/run.sh gpu-check.json

On any machine, the same code end to end with tiny sizes on the CPU (the slow suite runs it)::

    python benchmarks/gpu/check.py /tmp/gpu-check.json --dry-run

Phases, each with its own time budget (``--budget-PHASE`` seconds); the JSON file is rewritten
atomically after every phase and every training arm, so a run cut short still reports:

* ``env``: versions, the GPU, load average;
* ``tests``: ``pytest -m cuda tests/test_cuda.py`` in a subprocess, outcome per test;
* ``train``: a Llama-shaped model with random weights (``llama-1b``: Llama-3.2-1B's shape), NF4 +
  bf16 compute, hybrid-25 (spectra's trainer, top 25 % of each type by Spectrum SNR) vs QLoRA on all
  linear modules (a plain peft loop, full logits), same rank, data, sequence length and batch, with
  and without gradient checkpointing: ``torch.cuda.max_memory_allocated``, median step time,
  tokens/s; plus ``hybrid-25-depth`` (``backward_layers``) where the allocator has that option;
* ``scan``: a Llama-3-8B-shaped checkpoint of random bf16 safetensors, scored by ``spectra``'s scan
  on the GPU and by the reference method (fp32 ``torch.linalg.svdvals`` per matrix on the GPU),
  same scores, same top-25 % selection.

A short table is printed at the end; the exit status is 0 when every phase finished ok.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

from wheels import source_digest  # noqa: E402

from spectra_core.atomic import write_text  # noqa: E402

# Model shapes (transformers LlamaConfig fields). llama-1b is Llama-3.2-1B's shape.
TRAIN_MODELS = {
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "llama-3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
                 "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 1024, "tie_word_embeddings": False},
}
SCAN_SHAPES = {  # hidden, intermediate, key/value width, vocab, layers
    "llama-8b": {"hidden": 4096, "intermediate": 14336, "kv": 1024, "vocab": 128256, "layers": 32},
    "tiny": {"hidden": 128, "intermediate": 384, "kv": 32, "vocab": 1024, "layers": 2},
}
TARGETS = {"memory_ratio": 0.75, "step_time_ratio": 0.65, "scan_speedup": 4.0}
RANK, ALPHA, LEARNING_RATE = 16, 32, 2e-4


@dataclass
class Sizes:
    train_model: str
    seq: int
    batch: int
    steps: int
    warmup: int  # steps left out of the median
    scan_shape: str
    scan_embeddings: bool


GPU_SIZES = Sizes("llama-1b", seq=2048, batch=8, steps=8, warmup=2, scan_shape="llama-8b", scan_embeddings=True)
DRY_SIZES = Sizes("tiny", seq=64, batch=2, steps=3, warmup=1, scan_shape="tiny", scan_embeddings=True)
BUDGETS = {"tests": 110, "train": 230, "scan": 140}
DRY_BUDGETS = {"tests": 150, "train": 120, "scan": 60}


class Report:
    """The JSON document, rewritten atomically (temp file + rename) on every :meth:`save`."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    def save(self) -> None:
        self.data["updated"] = _now()
        write_text(self.path, json.dumps(self.data, indent=2, default=str) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _peak_rss_mib() -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def run_phase(report: Report, name: str, budget: float, fn: Callable[[dict[str, Any], float], None]) -> None:
    """Run ``fn(entry, deadline)``; record status, error and seconds in ``report.data["phases"][name]``."""
    entry: dict[str, Any] = {"status": "running", "budget_s": budget}
    report.data["phases"][name] = entry
    report.save()
    start = time.monotonic()
    try:
        fn(entry, start + budget)
        if entry["status"] == "running":
            entry["status"] = "ok"
    except Exception as exc:  # a phase's failure is a result; the next phase still runs
        entry["status"] = "failed"
        entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        entry["traceback"] = traceback.format_exc()[-4000:]
    entry["seconds"] = round(time.monotonic() - start, 2)
    report.save()
    print(f"[{name}] {entry['status']} in {entry['seconds']:.0f} s", flush=True)


# ----- env -----------------------------------------------------------------------------------------
def env_phase(entry: dict[str, Any], deadline: float) -> None:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors", "datasets",
                 "pydantic", "pluggy", "tokenizers", "torchao", "pyarrow", "spectra-qlora"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    entry.update({"python": platform.python_version(), "versions": versions, "cuda": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(),
                  "source_sha256": source_digest()})
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        entry["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                        "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
    import bitsandbytes  # noqa: F401 - the phase fails here when the carried wheel does not load


# ----- tests ---------------------------------------------------------------------------------------
CHILDREN: list[subprocess.Popen] = []  # running subprocesses, killed on SIGTERM
OUTCOME = re.compile(r"^(tests/\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")
SUMMARY = re.compile(r"^(FAILED|ERROR|SKIPPED) (?:\[\d+\] )?(\S+)(?: - (.*))?$")


def tests_phase(entry: dict[str, Any], deadline: float) -> None:
    # in-process: the project's addopts ask for pytest-xdist workers, which the GPU machine does not carry
    cmd = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-o", "addopts=--strict-markers", "-p", "no:xdist",
           "-m", "cuda", "-v", "-rfEs", "-p", "no:cacheprovider"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    entry["command"] = " ".join(cmd[1:])
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        CHILDREN.append(proc)
        try:
            output, _ = proc.communicate(timeout=max(10.0, deadline - time.monotonic()))
            entry["exit_code"] = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            entry["exit_code"], entry["status"] = None, "over budget"
        finally:
            CHILDREN.remove(proc)
    results: dict[str, dict[str, str]] = {}
    for line in output.splitlines():
        if m := OUTCOME.match(line):
            results[m.group(1).split("::", 1)[1]] = {"outcome": m.group(2)}
        elif (m := SUMMARY.match(line)) and "::" in m.group(2):
            results.setdefault(m.group(2).split("::", 1)[1], {"outcome": m.group(1)})["message"] = (m.group(3) or "")[:500]
    entry["tests"] = results
    entry["counts"] = {k: sum(r["outcome"] == k for r in results.values()) for k in ("PASSED", "FAILED", "SKIPPED",
                                                                                     "ERROR")}
    entry["output_tail"] = output[-3000:]
    if entry["status"] == "running" and (entry["exit_code"] != 0 or not results):
        entry["status"] = "failed"


# ----- train ---------------------------------------------------------------------------------------
def _device() -> str:
    """This process's device as a string ("cuda:0" or "cpu"), for torch and safetensors alike."""
    from spectra_core.devices import local_device

    return str(local_device())


def build_train_model(directory: Path, shape: dict[str, Any]) -> dict[str, Any]:
    """A random-weight LlamaForCausalLM (bf16 safetensors) + a small BPE tokenizer in ``directory``."""
    import torch
    from train_fixtures import make_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    config = LlamaConfig(**shape, max_position_embeddings=8192, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(_device()):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    del model
    _free()
    return {"shape": shape, "parameters": params}


def write_corpus(path: Path, tokens: int) -> Path:
    """Random sentences over the tokenizer's vocabulary, about ``tokens`` tokens (≈ 1.3 tokens per word)."""
    from train_fixtures import sentences

    lines, words = [], 0
    seed = 0
    while words * 1.3 < tokens:
        batch = sentences(2000, seed=seed)
        lines += batch
        words += sum(len(s.split()) for s in batch)
        seed += 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_cuda_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _config(model_dir: Path, data: Path, out: Path, sizes: Sizes, batch: int, checkpointing: bool,
            allocator: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": {"source": str(model_dir)},
        "quantizer": {"name": "bnb-nf4", "options": {"compute_dtype": "auto"}},
        "scorer": {"name": "spectrum"},
        "allocator": {"name": "spectrum-top", "options": {"top_fraction": 0.25, "rank": RANK, "alpha": ALPHA,
                                                          **allocator}},
        "data": {"path": str(data), "max_length": sizes.seq, "validation_fraction": 0.02},
        "training": {"max_steps": sizes.steps, "batch_size": batch, "learning_rate": LEARNING_RATE,
                     "warmup_steps": 1, "gradient_checkpointing": checkpointing, "eval_every": sizes.steps,
                     "eval_batches": 1, "save_every": sizes.steps, "log_every": 1, "seed": 0},
        "output_dir": str(out),
        "exporters": [],
    }


def spectra_arm(model_dir: Path, data: Path, work: Path, sizes: Sizes, batch: int, checkpointing: bool,
                allocator: dict[str, Any], plan: Any) -> dict[str, Any]:
    """spectra's trainer on ``plan`` (scan + allocation done once beforehand)."""
    from spectra_core.pipeline import Pipeline
    from spectra_core.training.metrics import read_metrics

    out = work / f"run-{len(list(work.glob('run-*')))}"
    pipe = Pipeline.from_dict(_config(model_dir, data, out, sizes, batch, checkpointing, allocator))
    run = pipe.train(plan.model_copy(deep=True))
    peak = _peak_cuda_mib()
    steps = [r for r in read_metrics(out / "metrics.jsonl") if "step_time_s" in r][sizes.warmup:]
    del run, pipe
    shutil.rmtree(out, ignore_errors=True)
    return {"trainer": "spectra", "trainable_params": plan.trainable_parameters(), "active_modules": len(plan.active()),
            "step_time_s": statistics.median(r["step_time_s"] for r in steps),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps), "peak_cuda_mib": peak,
            "final_loss": steps[-1]["loss"]}


def qlora_all_arm(model_dir: Path, data: Path, sizes: Sizes, batch: int, checkpointing: bool) -> dict[str, Any]:
    """Plain peft QLoRA on every linear module: HF forward with full logits and its loss, AdamW."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from spectra_core.builtins.quantizers import device_map, resolve_compute_dtype
    from spectra_core.quantized import guard_bnb_cpu_repack
    from spectra_core.config import DataConfig
    from spectra_core.data import collate, load_data

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    train = load_data(DataConfig(path=str(data), max_length=sizes.seq, validation_fraction=0.02), tok).train
    compute = getattr(torch, resolve_compute_dtype("auto"))
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=compute,
                                                 device_map=device_map(), use_safetensors=True)
    guard_bnb_cpu_repack(model)
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", lora_dropout=0,
                                             task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE)
    device = next(params.__iter__()).device
    times, losses = [], []
    for step in range(sizes.steps):
        rows = [train[(step * batch + i) % len(train)] for i in range(batch)]
        batch_t = {k: v.to(device) for k, v in collate(rows, tok.pad_token_id).items()}
        started = time.perf_counter()
        loss = model(**batch_t).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))  # synchronises, like the spectra trainer's per-step loss read
        times.append(time.perf_counter() - started)
    peak = _peak_cuda_mib()
    modules = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    trainable = sum(p.numel() for p in params)
    del model, opt, params
    measured = times[sizes.warmup:]
    return {"trainer": "peft loop", "trainable_params": trainable, "active_modules": modules,
            "step_time_s": statistics.median(measured), "tokens_per_s": batch * (sizes.seq - 1) / statistics.median(measured),
            "peak_cuda_mib": peak, "final_loss": losses[-1]}


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def train_phase(report: Report, sizes: Sizes) -> Callable[[dict[str, Any], float], None]:
    def phase(entry: dict[str, Any], deadline: float) -> None:
        from spectra_core.pipeline import Pipeline
        from spectra_core.registry import get_registry

        work = Path(tempfile.mkdtemp(prefix="spectra-gpu-train-"))
        try:
            shape = TRAIN_MODELS[sizes.train_model]
            entry["setup"] = {**asdict(sizes), "rank": RANK, "alpha": ALPHA, "quantizer": "bnb-nf4 (double quant)",
                              "compute_dtype": "bfloat16 on CUDA (auto), float32 on CPU"}
            t0 = time.monotonic()
            entry["model"] = build_train_model(work / "model", shape)
            data = write_corpus(work / "data.txt", tokens=int((sizes.steps * sizes.batch + 4) * sizes.seq / 0.97))
            allocators = {"hybrid-25": {}}
            options = get_registry().get("allocator", "spectrum-top").Options.model_fields
            if "backward_layers" in options:
                # the last third of the layers, as configs/compare/arms/hybrid-depth10.yaml (10 of 30)
                allocators["hybrid-25-depth"] = {"backward_layers": max(1, round(shape["num_hidden_layers"] / 3))}
            else:
                entry["depth_aware"] = "not available: spectrum-top has no backward_layers option in this checkout"
            plans = {}
            for arm, alloc in allocators.items():
                pipe = Pipeline.from_dict(_config(work / "model", data, work / "plan", sizes, sizes.batch, False, alloc))
                plans[arm] = pipe.plan()
            entry["setup_s"] = round(time.monotonic() - t0, 1)
            _free()
            entry["arms"] = []
            for checkpointing in (False, True):
                batch = sizes.batch
                while batch >= 1:
                    results = _measure_setting(entry, deadline, work, data, sizes, batch, checkpointing,
                                               allocators, plans, report)
                    if not any(r.get("status") == "oom" for r in results):
                        break
                    batch //= 2  # "batch as fits": every arm of a setting uses the same batch
            entry["ratios"] = _ratios(entry["arms"])
            failed = [a for a in entry["arms"] if a["status"] == "failed"]
            if failed:
                entry["status"], entry["error"] = "failed", f"{failed[0]['arm']}: {failed[0]['error']}"
            elif any(a["status"].startswith("skipped") for a in entry["arms"]):
                entry["status"] = "over budget"
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return phase


def _measure_setting(entry: dict[str, Any], deadline: float, work: Path, data: Path, sizes: Sizes, batch: int,
                     checkpointing: bool, allocators: dict[str, Any], plans: dict[str, Any],
                     report: Report) -> list[dict[str, Any]]:
    results = []
    for arm in ("qlora-all", *allocators):
        result: dict[str, Any] = {"arm": arm, "gradient_checkpointing": checkpointing, "batch": batch,
                                  "seq": sizes.seq}
        if time.monotonic() > deadline:
            result["status"] = "skipped: phase budget spent"
        else:
            _free()
            started = time.monotonic()
            try:
                if arm == "qlora-all":
                    result.update(qlora_all_arm(work / "model", data, sizes, batch, checkpointing))
                else:
                    result.update(spectra_arm(work / "model", data, work, sizes, batch, checkpointing,
                                              allocators[arm], plans[arm]))
                result["status"] = "ok"
            except Exception as exc:
                result["status"] = "oom" if _is_oom(exc) else "failed"
                result["error"] = f"{type(exc).__name__}: {exc}"[:1500]
                if getattr(exc, "exit_code", None) == 128 + signal.SIGTERM:  # the trainer caught run.sh's cap
                    entry["arms"].append(result)
                    _terminated(report)
            result["seconds"] = round(time.monotonic() - started, 1)
            result["peak_rss_mib"] = _peak_rss_mib()
            _free()
        entry["arms"].append(result)
        results.append(result)
        report.save()
    return results


def _ratios(arms: list[dict[str, Any]]) -> dict[str, Any]:
    """arm / qlora-all per gradient-checkpointing setting, where both ran at the same batch."""
    out = {}
    ok = [a for a in arms if a.get("status") == "ok"]
    for a in ok:
        if a["arm"] == "qlora-all":
            continue
        base = next((b for b in ok if b["arm"] == "qlora-all" and b["batch"] == a["batch"]
                     and b["gradient_checkpointing"] == a["gradient_checkpointing"]), None)
        if base is None:
            continue
        key = f"{a['arm']}/qlora-all{' +gc' if a['gradient_checkpointing'] else ''}"
        memory = (a["peak_cuda_mib"] / base["peak_cuda_mib"]) if a["peak_cuda_mib"] and base["peak_cuda_mib"] else None
        step = a["step_time_s"] / base["step_time_s"]
        out[key] = {"memory_ratio": memory, "step_time_ratio": step, "batch": a["batch"],
                    "memory_target_met": None if memory is None else memory <= TARGETS["memory_ratio"],
                    "step_time_target_met": step <= TARGETS["step_time_ratio"]}
    return out


# ----- scan ----------------------------------------------------------------------------------------
def write_checkpoint(directory: Path, shape: dict[str, int], embeddings: bool) -> dict[str, Any]:
    """Random bf16 tensors with a Llama's shapes, one safetensors shard per layer, plus an index."""
    import torch
    from safetensors.torch import save_file

    h, i, kv, v = shape["hidden"], shape["intermediate"], shape["kv"], shape["vocab"]
    per_layer = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                 "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i),
                 "input_layernorm": (h,), "post_attention_layernorm": (h,)}
    groups = [(f"layer{n}", {f"model.layers.{n}.{k}.weight": s for k, s in per_layer.items()})
              for n in range(shape["layers"])]
    if embeddings:
        groups.append(("embed", {"model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h),
                                 "model.norm.weight": (h,)}))
    directory.mkdir(parents=True)
    g = torch.Generator(_device()).manual_seed(0)
    weight_map, params = {}, 0
    for label, tensors in groups:
        data = {k: (torch.randn(s, generator=g, device=_device()) * 0.02).to(torch.bfloat16).cpu()
                for k, s in tensors.items()}
        params += sum(t.numel() for t in data.values())
        save_file(data, directory / f"{label}.safetensors")
        weight_map.update(dict.fromkeys(data, f"{label}.safetensors"))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return {"parameters": params, "bytes": sum(p.stat().st_size for p in directory.iterdir()), "tensors": len(weight_map)}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reference_scores(directory: Path, names: list[str], deadline: float) -> tuple[dict[str, float], float]:
    """The reference method: each matrix loaded onto the device, fp32 ``svdvals``, Spectrum's formula.
    Stops at ``deadline``; returns the scores done and their seconds."""
    import torch
    from safetensors import safe_open

    from spectra_core.spectral.snr import spectrum_snr

    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    scores: dict[str, float] = {}
    started = time.perf_counter()
    for name in names:
        if time.monotonic() > deadline:
            break
        with safe_open(directory / weight_map[f"{name}.weight"], "pt", device=_device()) as fh:
            w = fh.get_tensor(f"{name}.weight").float()
        w = w.reshape(1, -1) if w.dim() == 1 else w
        scores[name] = spectrum_snr(torch.linalg.svdvals(w).cpu(), tuple(w.shape))
    _sync()
    return scores, time.perf_counter() - started


def _warm_up() -> None:
    """First-call costs (CUDA context, cuSOLVER/cuBLAS handles) paid before either arm is timed."""
    import torch

    w = torch.randn(64, 96, device=_device())
    torch.linalg.svdvals(w)
    torch.linalg.eigvalsh((w @ w.T).double())
    _sync()


def _compare(ours: dict[str, float], reference: dict[str, float]) -> dict[str, Any]:
    from spectra_core.scores import ModuleScore, Scores
    from spectra_core.spectral.selection import top_percent
    from spectra_core.spectral.types import module_type

    finite = [n for n in reference if math.isfinite(reference[n]) and math.isfinite(ours[n])]
    same_inf = all(math.isfinite(reference[n]) == math.isfinite(ours[n]) for n in reference)
    diff = max((abs(ours[n] - reference[n]) / abs(reference[n]) for n in finite if reference[n]), default=0.0)

    def selection(scores: dict[str, float]) -> dict[str, list[str]]:
        s = Scores(scorer="spectrum", modules=[ModuleScore(name=n, type=module_type(n), score=scores[n]) for n in reference])
        return {t: [m.name for m in ms] for t, ms in top_percent(s, 25).items()}

    return {"modules_compared": len(reference), "max_rel_score_diff": diff, "same_infinite_scores": same_inf,
            "same_top25_selection": selection(ours) == selection(reference)}


def scan_phase(report: Report, sizes: Sizes) -> Callable[[dict[str, Any], float], None]:
    """Reference first (it is the slow arm: it gets ~40 % of what is left, and stops there), then ours on
    exactly the matrices it finished, then ours on the whole checkpoint if the rest of the budget allows."""
    def phase(entry: dict[str, Any], deadline: float) -> None:
        from spectra_core.spectral.scan import run_scan
        from spectra_core.spectral.sources import open_weights

        work = Path(tempfile.mkdtemp(prefix="spectra-gpu-scan-"))
        try:
            shape = SCAN_SHAPES[sizes.scan_shape]
            t0 = time.perf_counter()
            entry["checkpoint"] = {"shape": sizes.scan_shape, **shape, "embeddings": sizes.scan_embeddings,
                                   **write_checkpoint(work / "ckpt", shape, sizes.scan_embeddings)}
            entry["checkpoint"]["write_s"] = round(time.perf_counter() - t0, 1)
            report.save()
            _warm_up()
            names = open_weights(work / "ckpt").names()
            reference, ref_s = reference_scores(work / "ckpt", names,
                                                time.monotonic() + 0.4 * (deadline - time.monotonic()))
            entry["reference"] = {"method": "fp32 torch.linalg.svdvals per matrix, on the same device",
                                  "modules": len(reference), "of": len(names), "seconds": ref_s}
            report.save()
            t0 = time.perf_counter()
            subset = run_scan(work / "ckpt", "spectrum", names=list(reference), use_cache=False, device="auto")
            ours_s = time.perf_counter() - t0
            ours = {m.name: m.score for m in subset.scores.modules}
            entry["comparison"] = {**_compare(ours, reference), "ours_s": ours_s, "reference_s": ref_s,
                                   "speedup": ref_s / ours_s, "device": _device()}
            entry["comparison"]["speedup_target_met"] = entry["comparison"]["speedup"] >= TARGETS["scan_speedup"]
            report.save()
            estimate = ours_s * len(names) / max(1, len(reference))
            if len(reference) == len(names):
                entry["full"] = {"modules": len(names), "seconds": ours_s}
            elif time.monotonic() + 1.2 * estimate < deadline:
                t0 = time.perf_counter()
                full = run_scan(work / "ckpt", "spectrum", use_cache=False, device="auto")
                entry["full"] = {"modules": len(full.scores.modules), "seconds": time.perf_counter() - t0}
            else:
                entry["full"] = {"skipped": f"estimated {estimate:.0f} s, more than the phase has left"}
            entry["full"]["peak_cuda_mib"] = _peak_cuda_mib()
            if not (entry["comparison"]["same_top25_selection"] and entry["comparison"]["max_rel_score_diff"] <= 1e-4):
                entry["status"] = "failed"
                entry["error"] = "the scan's scores differ from the reference method's"
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return phase


def _terminated(report: Report) -> None:
    """SIGTERM (run.sh's time cap): stop the test subprocess, record which phase was cut short, save,
    exit 124 like ``timeout``."""
    for child in CHILDREN:
        child.kill()
    for entry in report.data["phases"].values():
        if entry.get("status") == "running":
            entry["status"] = "terminated"
    report.data["terminated"] = f"SIGTERM at {_now()} (time cap)"
    report.save()
    os._exit(124)


# ----- table ---------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def table(data: dict[str, Any]) -> str:
    """A short plain-text summary of the report."""
    phases = data["phases"]
    env = phases.get("env", {})
    lines = [f"GPU check ({'DRY RUN on CPU, tiny sizes: no figures' if data['dry_run'] else env.get('gpu', {}).get('name', 'no GPU')}), "
             f"load average {data['loadavg_start']} -> {data.get('loadavg_end', '?')}"]
    lines.append("phase    status        seconds")
    for name, p in phases.items():
        lines.append(f"{name:8} {p.get('status', '?'):13} {_fmt(p.get('seconds'), '.0f'):>7}")
    tests = phases.get("tests", {}).get("counts")
    if tests:
        lines.append("cuda tests: " + ", ".join(f"{v} {k.lower()}" for k, v in tests.items() if v))
    arms = phases.get("train", {}).get("arms", [])
    if arms:
        lines.append(f"{'arm':18}{'gc':>4}{'batch':>6}{'peak CUDA MiB':>15}{'step s':>9}{'tokens/s':>10}  status")
        for a in arms:
            lines.append(f"{a['arm']:18}{'yes' if a['gradient_checkpointing'] else 'no':>4}{a['batch']:>6}"
                         f"{_fmt(a.get('peak_cuda_mib'), '.0f'):>15}{_fmt(a.get('step_time_s'), '.3f'):>9}"
                         f"{_fmt(a.get('tokens_per_s'), '.0f'):>10}  {a['status']}")
        for key, r in phases["train"].get("ratios", {}).items():
            lines.append(f"{key:28} memory {_fmt(r['memory_ratio'])} (target ≤ {TARGETS['memory_ratio']}), "
                         f"step time {_fmt(r['step_time_ratio'])} (target ≤ {TARGETS['step_time_ratio']})")
    cmp_ = phases.get("scan", {}).get("comparison")
    if cmp_:
        full = phases["scan"].get("full", {})
        if "seconds" in full:
            lines.append(f"scan of the whole checkpoint ({full['modules']} matrices): {full['seconds']:.1f} s")
        lines.append(f"scan: ours {cmp_['ours_s']:.1f} s vs reference {cmp_['reference_s']:.1f} s on "
                     f"{cmp_['modules_compared']} modules: {cmp_['speedup']:.2f}x (target ≥ {TARGETS['scan_speedup']}), "
                     f"max rel. score diff {cmp_['max_rel_score_diff']:.1e}, same top-25 %: {cmp_['same_top25_selection']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="JSON file to write (rewritten after every phase)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: exercises every phase's code")
    ap.add_argument("--phases", default="tests,train,scan", help="comma-separated subset of tests,train,scan")
    ap.add_argument("--train-model", choices=sorted(TRAIN_MODELS), help="model shape of the train phase")
    ap.add_argument("--batch", type=int, help="first batch size tried (halved on out-of-memory)")
    ap.add_argument("--steps", type=int, help="optimizer steps per training arm")
    for name in BUDGETS:
        ap.add_argument(f"--budget-{name}", type=float, help=f"seconds for the {name} phase")
    args = ap.parse_args()
    import torch

    if args.dry_run:
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print("no CUDA GPU visible: run on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    sizes = Sizes(**{**asdict(sizes), **{k: v for k, v in (("train_model", args.train_model), ("batch", args.batch),
                                                             ("steps", args.steps)) if v is not None}})
    budgets = {k: getattr(args, f"budget_{k}") or (DRY_BUDGETS if args.dry_run else BUDGETS)[k] for k in BUDGETS}
    report = Report(args.out, {"schema": 1, "dry_run": args.dry_run, "started": _now(), "loadavg_start": _loadavg(),
                               "host": platform.node(), "budgets_s": budgets, "targets": TARGETS, "phases": {}})
    phases = {"tests": tests_phase, "train": train_phase(report, sizes), "scan": scan_phase(report, sizes)}
    wanted = [p for p in args.phases.split(",") if p]
    unknown = sorted(set(wanted) - set(phases))
    if unknown:
        print(f"unknown phase(s) {', '.join(unknown)}: choose from {', '.join(phases)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda signum, frame: _terminated(report))
    run_phase(report, "env", 60, env_phase)
    for name, fn in phases.items():
        if name in wanted:
            run_phase(report, name, budgets[name], fn)
    report.data["loadavg_end"] = _loadavg()
    report.data["finished"] = _now()
    report.save()
    print(table(report.data))
    return 0 if all(p["status"] == "ok" for p in report.data["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
