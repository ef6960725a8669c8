"""Methods side by side at equal trainable parameters and tuned learning rates: a thin wrapper over
``spectra compare`` (one comparison engine) on the two compare configs in ``benchmarks/compare/``:

- ``kjv.yaml``: the bundled SmolLM2-135M-Instruct on KJV Genesis + Exodus (public domain);
- ``jargon.yaml``: the same model on the Jargon File 4.4.7 lexicon, entries a–d (public domain).

Each config's arms, budget (steps, seeds, LR grid) and splits live in the YAML; this script runs the
compare (resumable: finished runs are skipped), then writes each corpus's setup line, table and Pareto
plot into docs/benchmarks.md (between ``<!-- methods:compare-CORPUS:start/end -->``) and docs/img/.

    python benchmarks/methods.py --quick --corpus kjv --jobs 2   # every arm, 5 steps, 1 seed, 2 LRs: 14 min on 2 idle cores
    python benchmarks/methods.py            # 100 steps, 3 seeds, 3 LRs, both corpora: ~7 h on 2 idle cores
    python benchmarks/methods.py --report   # only re-render the docs from the results already there

The earlier fixed-LR, unequal-budget run (benchmarks/methods-results*.json, methods-lr-probe.json) was
made by this script's previous version (commit 84dfeb6); its tables stay in docs/benchmarks.md as published.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from common import ROOT, arm_env

from spectra_core.atomic import write_text

CORPORA = ("kjv", "jargon")


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


def publish(corpus: str, out: Path, docs: Path, quick: bool) -> None:
    """Copy the compare's plot into ``docs``/img and its setup + table into ``docs``/benchmarks.md."""
    name = f"compare-{corpus}{'-quick' if quick else ''}"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    (docs / "img").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "pareto.png", docs / "img" / f"{name}.png")
    state = "" if summary["complete"] else ("\n\n**Partial:** arms or seeds marked *not run* / fewer than all seeds "
                                            "are still to run (the compare resumes where it stopped).")
    write_docs(name, f"{(out / 'table.md').read_text(encoding='utf-8').strip()}{state}\n\n"
               f"![held-out loss vs trainable parameters and vs step time ({corpus})](img/{name}.png)",
               docs / "benchmarks.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the configs' quick budgets")
    ap.add_argument("--corpus", nargs="+", choices=CORPORA, default=list(CORPORA))
    ap.add_argument("--only", nargs="+", default=[], help="run only these arms")
    ap.add_argument("--out", type=Path, help="folder for the compares' outputs (default: each config's output_dir; "
                    "--quick: runs/bench-methods-quick)")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="docs folder: benchmarks.md and img/ go here")
    ap.add_argument("--no-docs", action="store_true", help="do not touch the docs")
    ap.add_argument("--report", action="store_true", help="only re-render tables and plots from the results")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each)")
    args = ap.parse_args()
    failed = []
    for corpus in args.corpus:
        config = ROOT / "benchmarks" / "compare" / f"{corpus}.yaml"
        root = args.out or (ROOT / "runs" / "bench-methods-quick" if args.quick else None)
        out = root / corpus if root else ROOT / "benchmarks" / "compare" / corpus
        cmd = [sys.executable, "-m", "spectra_core", "compare", str(config), "--out", str(out),
               *(["--quick"] if args.quick else []), *(["--report"] if args.report else []), f"--jobs={args.jobs}",
               *(f"--only={arm}" for arm in args.only)]
        if subprocess.run(cmd, cwd=ROOT, env=arm_env(1)).returncode:
            failed.append(corpus)
        if not args.no_docs and (out / "summary.json").is_file():
            publish(corpus, out, args.docs, args.quick)
    if failed:
        sys.exit(f"compare failed for {', '.join(failed)} (rerun to resume; see the logs in the output folders)")


if __name__ == "__main__":
    main()
