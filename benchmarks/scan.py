"""Spectral scan benchmark: ours vs the reference method, side by side in one run, with the machine's load.

(a) SmolLM2-135M (bundled GGUF, converted once to a safetensors dir): `spectra scan` (the real CLI
    path, exact) vs the reference method (transformers loads the whole model in fp32, svdvals per
    module), ``--runs`` times each, every arm in its own interpreter (wall time includes imports;
    peak RSS is VmHWM). Also the approximate mode (``method=slq``, every matrix approximated).
(b) One Llama-3-8B-shaped layer (random bf16 plus planted low-rank signals): our exact and
    approximate scans, and the reference's fp32 ``svdvals`` timed on each of the layer's matrices.
(c) ``--8b-full``: the whole 8B-shaped checkpoint (32 layers + embedding + lm_head, ~16 GB written
    under ``--tmp``, deleted afterwards): wall time and peak RSS of the exact scan (~35 min on 2
    idle cores), with ``--8b-full-approx`` also of the approximate scan and their agreement; the
    reference is extrapolated from (b)'s per-matrix times (its whole-model fp32 load, 32 GB, cannot
    fit in this machine's RAM).

Our arms print the per-phase table (import, index, read, check, upcast, gram, eigensolve, svd,
approx, score, selection, write). A load monitor records the load average before and after and
samples other runnable processes; the results JSON is always written, the docs table
(``docs/performance.md`` between the ``scan-benchmark`` markers) only when the machine was idle
(see ``machine_load.py`` for the rule), or with ``--allow-busy``, labelled with the load.

Usage: python benchmarks/scan.py [--runs 3] [--8b-full [--8b-full-approx]] [--skip-smollm2] [--skip-8b-layer] [--allow-busy]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, peak_rss_mib, run_subprocess
from machine_load import LoadMonitor

LLAMA3_8B = {"hidden": 4096, "intermediate": 14336, "kv": 1024, "vocab": 128256, "layers": 32}
RESULTS = ROOT / "benchmarks" / "scan-results.json"
DOCS = ROOT / "docs" / "performance.md"
MARKERS = ("<!-- scan-benchmark:start -->", "<!-- scan-benchmark:end -->")
APPROX = ["-o", "method=slq"]  # the approximate mode with its defaults
APPROX_ALL = [*APPROX, "-o", "exact_below=0"]  # approximate even the small matrices (SmolLM2's are all < 1024)


# ----- the arms (each runs in its own interpreter: python benchmarks/scan.py --arm NAME --result FILE ...)
def arm_ours(model: str, options: list[str]) -> dict:
    """`spectra scan` in this interpreter (the CLI's own code path), with the per-phase timings."""
    start = time.perf_counter()
    from spectra_core.cli import main
    from spectra_core.scores import Scores
    from spectra_core.spectral import phases

    phases.add("import", time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as out:
        try:
            main(["scan", model, "--out", out, "--no-cache", "--quiet", *options])
        except SystemExit as exc:  # click's standalone mode exits, 0 on success
            if exc.code:
                raise
        scores = Scores.load(Path(out) / "scores.json")
    return {"in_process_s": time.perf_counter() - start, "phases": phases.snapshot(),
            "scores": {m.name: m.score for m in scores.modules}, "rss_mb": peak_rss_mib()}


def arm_reference(model: str, names_file: str) -> dict:
    """The reference method: whole model in fp32 through transformers, fp32 svdvals per module."""
    import torch
    from transformers import AutoModelForCausalLM

    from spectra_core.spectral.snr import spectrum_snr

    names = set(json.loads(Path(names_file).read_text()))
    model_ = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    scores = {}
    for name, module in model_.named_modules():
        if name in names:
            w = module.weight.detach().float()
            w = w.reshape(1, -1) if w.dim() == 1 else w
            scores[name] = spectrum_snr(torch.linalg.svdvals(w), tuple(w.shape))
    return {"scores": scores, "rss_mb": peak_rss_mib()}


def arm_reference_shapes(shapes_json: str) -> dict:
    """The reference's per-matrix cost: fp32 svdvals of a random matrix of each shape, seconds."""
    import torch

    out = {}
    for label, shape in json.loads(shapes_json).items():
        w = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.02
        start = time.perf_counter()
        torch.linalg.svdvals(w)
        out[label] = time.perf_counter() - start
        del w
    return {"seconds": out, "rss_mb": peak_rss_mib()}


ARMS = {"ours": lambda a: arm_ours(a[0], a[1:]), "reference": lambda a: arm_reference(*a),
        "reference-shapes": lambda a: arm_reference_shapes(*a)}


def timed(arm: str, args: list[str], threads: int) -> tuple[float, dict]:
    start = time.perf_counter()
    data = run_subprocess(Path(__file__), ["--arm", arm, *args], threads=threads)
    return time.perf_counter() - start, data


# ----- checkpoints -----------------------------------------------------------------------------------
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


def layer_shapes() -> dict[str, tuple[int, ...]]:
    h, i, kv = (LLAMA3_8B[k] for k in ("hidden", "intermediate", "kv"))
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i),
            "input_layernorm": (h,), "post_attention_layernorm": (h,)}


def planted(shape: tuple[int, ...], generator) -> "torch.Tensor":
    """0.02·(noise + a rank-8 signal of random strength), bf16: a spread of scores to select from
    (pure noise would give every module of a type the same score up to sampling error)."""
    import torch

    if len(shape) == 1:
        return (1 + 0.1 * torch.randn(shape, generator=generator)).to(torch.bfloat16)
    n, m = shape
    w = torch.randn(shape, generator=generator)
    strength = float(torch.rand((), generator=generator)) * 3 * max(n, m) ** 0.5
    u = torch.linalg.qr(torch.randn(n, 8, generator=generator))[0]
    v = torch.linalg.qr(torch.randn(m, 8, generator=generator))[0]
    w += (u * (strength * torch.linspace(1.0, 0.3, 8))) @ v.T
    return (w * 0.02).to(torch.bfloat16)


def write_8b(directory: Path, layers: int, embeddings: bool) -> int:
    """Llama-3-8B shapes, one shard per layer (+ one for embedding and lm_head); returns the parameter count."""
    import torch
    from safetensors.torch import save_file

    h, v = LLAMA3_8B["hidden"], LLAMA3_8B["vocab"]
    weight_map, params = {}, 0
    g = torch.Generator().manual_seed(0)
    groups = [(f"layer{n}", {f"model.layers.{n}.{k}.weight": s for k, s in layer_shapes().items()})
              for n in range(layers)]
    if embeddings:
        groups.append(("embed", {"model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h),
                                 "model.norm.weight": (h,)}))
    for label, tensors in groups:
        shard = f"{label}.safetensors"
        data = {k: planted(s, g) for k, s in tensors.items()}
        params += sum(t.numel() for t in data.values())
        save_file(data, directory / shard)
        weight_map.update(dict.fromkeys(data, shard))
        del data
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return params


# ----- comparisons ------------------------------------------------------------------------------------
def top_sets(scores: dict[str, float], percent: int) -> dict[str, set[str]]:
    from spectra_core.scores import ModuleScore, Scores
    from spectra_core.spectral.selection import reference_order, top_percent
    from spectra_core.spectral.types import module_type

    s = reference_order(Scores(scorer="x", modules=[ModuleScore(name=n, type=module_type(n), score=v)
                                                    for n, v in scores.items()]))
    return {t: {m.name for m in ms} for t, ms in top_percent(s, percent).items()}


def agreement(ours: dict[str, float], exact: dict[str, float]) -> dict:
    """Largest relative score difference and the share of top-P % picks that are the same."""
    assert set(ours) == set(exact), "module sets differ"
    diffs = [abs(a - exact[n]) / abs(exact[n]) for n, a in ours.items()
             if math.isfinite(a) and math.isfinite(exact[n]) and exact[n] != 0]
    out = {"max_rel_score_diff": max(diffs, default=0.0),
           "median_rel_score_diff": statistics.median(diffs) if diffs else 0.0}
    for p in (10, 25, 50):
        a, b = top_sets(ours, p), top_sets(exact, p)
        picked = sum(len(v) for v in b.values())
        same = sum(len(a[t] & b[t]) for t in b)
        out[f"top{p}_identical"] = a == b
        out[f"top{p}_overlap"] = same / picked if picked else 1.0
    return out


def spread(values: list[float]) -> dict:
    return {"min": min(values), "max": max(values), "median": statistics.median(values), "runs": values}


def print_phases(title: str, data: dict, wall: float) -> None:
    from spectra_core.spectral.phases import table

    print(f"\n{title} (wall {wall:.2f} s; worker-thread phases add up per thread)")
    interpreter = {"interpreter": {"seconds": max(0.0, wall - data["in_process_s"]), "calls": 1}}
    print(table({**interpreter, **data["phases"]}, wall), flush=True)


# ----- the benchmarks --------------------------------------------------------------------------------
def bench_smollm2(runs: int, threads: int) -> dict:
    from spectra_core.spectral.sources import open_weights

    with tempfile.TemporaryDirectory() as tmp:
        model = str(convert_smollm2(Path(tmp) / "smollm2"))
        names_file = Path(tmp) / "names.json"
        names_file.write_text(json.dumps(open_weights(model).names()))
        ours, ref = [], []
        for _ in range(runs):  # interleaved, so slow drifts in the load hit both arms alike
            ours.append(timed("ours", [model], threads))
            ref.append(timed("reference", [model, str(names_file)], threads))
        approx_t, approx = timed("ours", [model, *APPROX_ALL], threads)
    ours_s, ref_s = [t for t, _ in ours], [t for t, _ in ref]
    first = ours[0][1]
    print_phases("SmolLM2-135M, ours (exact), first run", first, ours[0][0])
    print_phases("SmolLM2-135M, ours (method=slq, exact_below=0)", approx, approx_t)
    vs_ref = agreement(first["scores"], ref[0][1]["scores"])
    return {"modules": len(first["scores"]), "ours_s": spread(ours_s), "reference_s": spread(ref_s),
            "speedup": spread([r / o for o, r in zip(ours_s, ref_s)]),
            "ours_rss_mb": first["rss_mb"], "reference_rss_mb": ref[0][1]["rss_mb"],
            "vs_reference": vs_ref, "phases": first["phases"],
            "approx": {"wall_s": approx_t, "speedup_vs_exact": statistics.median(ours_s) / approx_t,
                       "rss_mb": approx["rss_mb"], "vs_exact": agreement(approx["scores"], first["scores"]),
                       "phases": approx["phases"]}}


def bench_8b_layer(threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        params = write_8b(Path(tmp), 1, embeddings=False)
        exact_t, exact = timed("ours", [tmp], threads)
        approx_t, approx = timed("ours", [tmp, *APPROX], threads)
    print_phases("One 8B-shaped layer, ours (exact)", exact, exact_t)
    print_phases("One 8B-shaped layer, ours (method=slq)", approx, approx_t)
    shapes = {k: s for k, s in layer_shapes().items() if len(s) == 2}
    _, ref = timed("reference-shapes", [json.dumps(shapes)], threads)
    ref_layer = sum(ref["seconds"].values())
    return {"params": params, "ours_s": exact_t, "ours_rss_mb": exact["rss_mb"], "phases": exact["phases"],
            "approx_s": approx_t, "approx_rss_mb": approx["rss_mb"], "approx_phases": approx["phases"],
            "approx_vs_exact": agreement(approx["scores"], exact["scores"]),
            "reference_svdvals_s": ref["seconds"], "reference_layer_s": ref_layer,
            "speedup_vs_reference_svdvals": ref_layer / exact_t}


def bench_8b_full(threads: int, tmp_root: Path, layer_reference_s: float, approx_too: bool) -> dict:
    need = 17e9
    free = shutil.disk_usage(tmp_root).free
    if free < need * 1.2:
        raise SystemExit(f"--8b-full writes ~16 GB under {tmp_root} but only {free / 1e9:.1f} GB are free; "
                         "pass --tmp DIR on a disk with room")
    directory = Path(tempfile.mkdtemp(prefix="spectra-8b-", dir=tmp_root))
    try:
        start = time.perf_counter()
        params = write_8b(directory, LLAMA3_8B["layers"], embeddings=True)
        write_s = time.perf_counter() - start
        exact_t, exact = timed("ours", [str(directory)], threads)
        print_phases("Full 8B-shaped checkpoint, ours (exact)", exact, exact_t)
        if approx_too:
            approx_t, approx = timed("ours", [str(directory), *APPROX], threads)
            print_phases("Full 8B-shaped checkpoint, ours (method=slq)", approx, approx_t)
        h, v = LLAMA3_8B["hidden"], LLAMA3_8B["vocab"]
        _, emb = timed("reference-shapes", [json.dumps({"embedding_quarter": (v // 4, h)})], threads)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    embedding_s = 4 * emb["seconds"]["embedding_quarter"]  # svdvals cost is linear in the long side
    reference_s = LLAMA3_8B["layers"] * layer_reference_s + 2 * embedding_s
    result = {"params": params, "write_s": write_s, "ours_s": exact_t, "ours_rss_mb": exact["rss_mb"],
              "phases": exact["phases"]}
    if approx_too:
        result.update(approx_s=approx_t, approx_rss_mb=approx["rss_mb"], approx_phases=approx["phases"],
                      approx_speedup=exact_t / approx_t, approx_vs_exact=agreement(approx["scores"], exact["scores"]))
    return {**result, "reference_extrapolated_s": reference_s, "reference_embedding_svdvals_s": embedding_s,
            "reference_note": "extrapolated: 32 × the per-matrix fp32 svdvals times of one layer + 2 × 4 × "
                              "svdvals of a quarter-height embedding; its fp32 whole-model load (32.1 GB) "
                              "does not fit in RAM, so it cannot run here at all",
            "speedup_vs_reference_extrapolated": reference_s / exact_t}


# ----- the docs table ---------------------------------------------------------------------------------
def docs_table(report: dict) -> str:
    load = report["load"]
    head = ("idle machine" if load["idle"] else f"**busy machine, not an idle figure** ({load['label']})")
    lines = [f"Generated by `python benchmarks/scan.py` on {report['date']}, {report['threads']} threads, "
             f"{head}; load average {load['loadavg_before'][0]:.2f} before, {load['loadavg_after'][0]:.2f} "
             f"after, other runnable processes {load['other_running_mean']:.2f} on average.", "",
             "| measurement | ours | reference method | ratio |", "|---|---|---|---|"]
    if (a := report.get("smollm2_135m")):
        o, r, s = a["ours_s"], a["reference_s"], a["speedup"]
        lines += [f"| SmolLM2-135M scan, wall ({len(o['runs'])} runs) | {o['min']:.2f}–{o['max']:.2f} s | "
                  f"{r['min']:.2f}–{r['max']:.2f} s | **{s['min']:.2f}–{s['max']:.2f}×** |",
                  f"| SmolLM2-135M peak RSS | {a['ours_rss_mb']:.0f} MB | {a['reference_rss_mb']:.0f} MB | "
                  f"{a['reference_rss_mb'] / a['ours_rss_mb']:.2f}× less |",
                  f"| SmolLM2-135M scores vs reference | max rel. diff {a['vs_reference']['max_rel_score_diff']:.1e} | "
                  f"| top 10/25/50 % identical: {all(a['vs_reference'][f'top{p}_identical'] for p in (10, 25, 50))} |",
                  f"| SmolLM2-135M `method=slq` (all matrices) | {a['approx']['wall_s']:.2f} s | exact: "
                  f"{a['ours_s']['median']:.2f} s | {a['approx']['speedup_vs_exact']:.2f}×; max rel. diff "
                  f"{a['approx']['vs_exact']['max_rel_score_diff']:.1e}, top-25 % overlap "
                  f"{100 * a['approx']['vs_exact']['top25_overlap']:.0f} % |"]
    if (b := report.get("llama3_8b_layer")):
        lines += [f"| one 8B-shaped layer, exact | {b['ours_s']:.1f} s, {b['ours_rss_mb']:.0f} MB | svdvals "
                  f"{b['reference_layer_s']:.1f} s | {b['speedup_vs_reference_svdvals']:.2f}× |",
                  f"| one 8B-shaped layer, `method=slq` | {b['approx_s']:.1f} s, {b['approx_rss_mb']:.0f} MB | exact: "
                  f"{b['ours_s']:.1f} s | {b['ours_s'] / b['approx_s']:.2f}× |"]
    if (c := report.get("llama3_8b_full")):
        lines += [f"| full 8B-shaped scan, exact | {c['ours_s'] / 60:.1f} min, {c['ours_rss_mb']:.0f} MB | "
                  f"{c['reference_extrapolated_s'] / 60:.0f} min (extrapolated; its 32 GB fp32 load does not fit) | "
                  f"{c['speedup_vs_reference_extrapolated']:.1f}× |"]
    if c and "approx_s" in c:
        lines += [f"| full 8B-shaped scan, `method=slq` | {c['approx_s'] / 60:.1f} min, {c['approx_rss_mb']:.0f} MB | "
                  f"exact: {c['ours_s'] / 60:.1f} min | {c['approx_speedup']:.1f}×; top-25 % overlap "
                  f"{100 * c['approx_vs_exact']['top25_overlap']:.0f} % |"]
    return "\n".join(lines)


def write_docs(table: str) -> None:
    from spectra_core.atomic import write_text

    text = DOCS.read_text()
    start, end = (text.index(m) for m in MARKERS)
    write_text(DOCS, text[:start + len(MARKERS[0])] + "\n" + table + "\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="SmolLM2 runs per arm (interleaved)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--skip-8b-layer", action="store_true")
    parser.add_argument("--8b-full", dest="full", action="store_true", help="scan the whole 8B-shaped checkpoint")
    parser.add_argument("--8b-full-approx", dest="full_approx", action="store_true",
                        help="with --8b-full, also the approximate scan of the whole checkpoint (as long again; "
                             "the 8B layer run already measures method=slq at 8B widths)")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where --8b-full writes")
    parser.add_argument("--allow-busy", action="store_true", help="write the docs table even when the machine "
                                                                  "was busy (labelled with the load)")
    parser.add_argument("--no-docs", action="store_true", help="only print and write the results JSON")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.arm:  # torch takes its thread count from OMP_NUM_THREADS (set by run_subprocess)
        args.result.write_text(json.dumps(ARMS[args.arm](rest)))
        return
    if args.full and args.skip_8b_layer:
        parser.error("--8b-full extrapolates the reference from the 8B layer run; drop --skip-8b-layer")
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": args.threads}
    with LoadMonitor() as monitor:
        if not args.skip_smollm2:
            report["smollm2_135m"] = bench_smollm2(args.runs, args.threads)
        if not args.skip_8b_layer:
            report["llama3_8b_layer"] = bench_8b_layer(args.threads)
        if args.full:
            report["llama3_8b_full"] = bench_8b_full(args.threads, args.tmp,
                                                     report["llama3_8b_layer"]["reference_layer_s"], args.full_approx)
    report["load"] = {**monitor.report(), "label": monitor.label()}
    from spectra_core.atomic import write_text

    write_text(args.results, json.dumps(report, indent=2) + "\n")
    table = docs_table(report)
    print("\n" + table + "\n\n" + monitor.label(), flush=True)
    if args.no_docs:
        return
    if not report["load"]["idle"] and not args.allow_busy:
        print(f"machine was busy: NOT writing the docs table ({report['load']['idle_rule']}); "
              "rerun on an idle machine, or pass --allow-busy for a table labelled with the load", file=sys.stderr)
        sys.exit(3)
    write_docs(table)
    print(f"wrote the table into {DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
