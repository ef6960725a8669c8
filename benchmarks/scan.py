"""Spectral scan benchmark: ours vs the reference method, measured side by side in one run.

(a) SmolLM2-135M (bundled GGUF, converted once to a safetensors dir): our scan vs the reference
    method (whole model loaded in fp32 via transformers, svdvals per module, same modules). Each
    runs in its own subprocess; wall time includes imports and loading; peak RSS is VmHWM
    (ru_maxrss is inherited across exec from the benchmark process, so it is not used).
(b) A Llama-3-8B-shaped checkpoint (random bf16, one shard per layer): our peak RSS for 1 and
    ``--layers`` layers (it must not grow), and the fp32 RAM the reference's full load would need.

Usage: python benchmarks/scan.py [--skip-a] [--skip-b] [--layers 2] [--embeddings]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA3_8B = {"hidden": 4096, "intermediate": 14336, "kv": 1024, "vocab": 128256, "layers": 32}

OURS = """
import json, sys, torch
from spectra_core.spectral.scan import run_scan

def peak_mb():  # VmHWM: ru_maxrss survives exec, so a child would report its parent's peak
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) / 1024
r = run_scan(sys.argv[1], "spectrum", {"method": sys.argv[3]}, use_cache=False)
json.dump({"scores": {m.name: m.score for m in r.scores.modules},
           "rss_mb": peak_mb()}, open(sys.argv[2], "w"))
"""

REFERENCE = """
import json, sys, torch
from transformers import AutoModelForCausalLM

def peak_mb():  # VmHWM: ru_maxrss survives exec, so a child would report its parent's peak
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) / 1024
from spectra_core.spectral.snr import spectrum_snr
names = set(json.load(open(sys.argv[3])))
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
scores = {}
for name, module in model.named_modules():
    if name in names:
        w = module.weight.detach().float()
        w = w.reshape(1, -1) if w.dim() == 1 else w
        scores[name] = spectrum_snr(torch.linalg.svdvals(w), tuple(w.shape))  # fp32 svdvals, reference recipe
json.dump({"scores": scores, "rss_mb": peak_mb()},
          open(sys.argv[2], "w"))
"""


def run(code: str, *args: str, threads: int) -> tuple[float, dict]:
    """Run ``code`` in a fresh interpreter; return wall seconds and what it wrote."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, args[0], out, *args[1:]], check=True, env=env)
    wall = time.perf_counter() - start
    data = json.loads(Path(out).read_text())
    os.unlink(out)
    return wall, data


def convert_smollm2(directory: Path) -> Path:
    """Bundled GGUF → plain LlamaForCausalLM safetensors dir (transformers dequantizes on load)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from spectra_core.spectral.sources import resolve_model_path

    gguf = resolve_model_path("bundled:smollm2-135m")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(directory)
    return directory


def bench_smollm2(threads: int) -> dict:
    from spectra_core.spectral.selection import top_percent
    from spectra_core.scores import ModuleScore, Scores
    from spectra_core.spectral.sources import open_weights
    from spectra_core.spectral.types import module_type

    with tempfile.TemporaryDirectory() as tmp:
        model = convert_smollm2(Path(tmp) / "smollm2")
        names_file = Path(tmp) / "names.json"
        names_file.write_text(json.dumps(open_weights(model).names()))
        ours_t, ours = run(OURS, str(model), "auto", threads=threads)
        ref_t, ref = run(REFERENCE, str(model), str(names_file), threads=threads)
    assert set(ours["scores"]) == set(ref["scores"]), "module sets differ"
    diffs = [abs(a - ref["scores"][n]) / abs(ref["scores"][n]) for n, a in ours["scores"].items()
             if math.isfinite(a) and math.isfinite(ref["scores"][n])]

    def selection(scores: dict) -> dict:
        s = Scores(scorer="x", modules=[ModuleScore(name=n, type=module_type(n), score=v)
                                        for n, v in sorted(scores.items(), key=lambda kv: module_type(kv[0]))])
        return {p: {t: [m.name for m in ms] for t, ms in top_percent(s, p).items()} for p in (10, 25, 50)}

    return {"modules": len(ours["scores"]), "ours_s": ours_t, "reference_s": ref_t, "speedup": ref_t / ours_t,
            "ours_rss_mb": ours["rss_mb"], "reference_rss_mb": ref["rss_mb"],
            "rss_ratio": ref["rss_mb"] / ours["rss_mb"], "max_rel_score_diff": max(diffs),
            "same_selection": selection(ours["scores"]) == selection(ref["scores"])}


def write_8b(directory: Path, layers: int, embeddings: bool) -> int:
    """Random bf16 tensors with Llama-3-8B shapes, one shard per layer; returns the parameter count."""
    import torch
    from safetensors.torch import save_file

    h, i, kv, v = (LLAMA3_8B[k] for k in ("hidden", "intermediate", "kv", "vocab"))
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i),
              "input_layernorm": (h,), "post_attention_layernorm": (h,)}
    weight_map, params = {}, 0
    g = torch.Generator().manual_seed(0)
    groups = [(f"layer{n}", {f"model.layers.{n}.{k}.weight": s for k, s in shapes.items()}) for n in range(layers)]
    if embeddings:
        groups.append(("embed", {"model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h)}))
    for label, tensors in groups:
        shard = f"{label}.safetensors"
        data = {k: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for k, s in tensors.items()}
        params += sum(t.numel() for t in data.values())
        save_file(data, directory / shard)
        weight_map.update({k: shard for k in data})
        del data
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return params


def bench_8b(layers: int, embeddings: bool, threads: int) -> dict:
    result = {}
    for n in sorted({1, layers}):
        with tempfile.TemporaryDirectory() as tmp:
            params = write_8b(Path(tmp), n, embeddings)
            wall, data = run(OURS, tmp, "gram", threads=threads)
        result[f"{n}_layers"] = {"params": params, "ours_s": wall, "ours_rss_mb": data["rss_mb"]}
    h, i, kv, v, total = (LLAMA3_8B[k] for k in ("hidden", "intermediate", "kv", "vocab", "layers"))
    per_layer = 2 * h * h + 2 * kv * h + 3 * i * h + 2 * h
    result["reference_fp32_load_gb_32_layers"] = (total * per_layer + 2 * v * h + h) * 4 / 1e9
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="layers of the 8B-shaped checkpoint (32 = full)")
    parser.add_argument("--embeddings", action="store_true", help="include the 128256×4096 embedding and lm_head")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-a", action="store_true")
    parser.add_argument("--skip-b", action="store_true")
    args = parser.parse_args()
    report = {}
    if not args.skip_a:
        report["smollm2_135m"] = bench_smollm2(args.threads)
        print(json.dumps(report["smollm2_135m"], indent=2), flush=True)
    if not args.skip_b:
        report["llama3_8b_shaped"] = bench_8b(args.layers, args.embeddings, args.threads)
        print(json.dumps(report["llama3_8b_shaped"], indent=2), flush=True)


if __name__ == "__main__":
    main()
