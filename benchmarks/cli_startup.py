"""How long the CLI takes to answer before it does any work, side by side in one run: the interpreter
alone, `import torch`, `spectra --help`, a config file's YAML error, and `spectra config schema` (which
loads every plugin, so torch). Median wall seconds of ``--repeats`` runs each, and each one's ratio to
`import torch`. ``--baseline DIR`` (a checkout of another commit, e.g. ``git worktree add /tmp/old HEAD~1``)
also runs the spectra commands from there, interleaved with ours, and prints ours / baseline.
Usage: ``python benchmarks/cli_startup.py [--repeats 5] [--baseline DIR] [--json OUT]``."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT
from machine_load import load_average

SPECTRA = [sys.executable, "-m", "spectra_core"]


def commands(bad_yaml: Path, baseline: Path | None) -> dict[str, tuple[list[str], int, Path]]:
    """name: (command, the exit code it must end with, the checkout it runs in: ``-m`` imports from there)."""
    spectra = {"spectra --help": (["--help"], 0), "spectra train BAD_YAML": (["train", str(bad_yaml)], 2),
               "spectra config schema": (["config", "schema"], 0)}
    found = {"python -c pass": ([sys.executable, "-c", "pass"], 0, ROOT),
             "import torch": ([sys.executable, "-c", "import torch"], 0, ROOT)}
    for name, (args, code) in spectra.items():
        found[name] = ([*SPECTRA, *args], code, ROOT)
        if baseline is not None:
            found[f"{name} @baseline"] = ([*SPECTRA, *args], code, baseline)
    return found


def wall(cmd: list[str], code: int, cwd: Path) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
    took = time.perf_counter() - start
    if res.returncode != code:
        raise SystemExit(f"{' '.join(cmd)} exited {res.returncode}, expected {code}:\n{res.stderr[-2000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="A checkout whose spectra commands run alongside ours.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "spectra_core" / "__init__.py").is_file():
        raise SystemExit(f"--baseline {args.baseline}: no spectra_core/ there; pass a checkout of this repository")
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.yaml"
        bad.write_text("model: [\n", encoding="utf-8")
        cmds = commands(bad, args.baseline)
        load_before = load_average()[0]
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.repeats):  # interleaved, so a load change hits every command alike
            for name, (cmd, code, cwd) in cmds.items():
                times[name].append(wall(cmd, code, cwd))
    medians = {name: statistics.median(t) for name, t in times.items()}
    torch_s = medians["import torch"]
    print(f"load average before: {load_before:.2f}; median of {args.repeats} runs each")
    ratios = {name: medians[name] / medians[f"{name} @baseline"] for name in medians if f"{name} @baseline" in medians}
    for name, sec in medians.items():
        vs = f"  {ratios[name]:5.2f}x baseline" if name in ratios else ""
        print(f"{name:<36} {sec:6.2f} s  {sec / torch_s:5.2f}x import torch{vs}")
    if args.json:
        args.json.write_text(json.dumps({"repeats": args.repeats, "load_before": load_before,
                                         "baseline": str(args.baseline) if args.baseline else None,
                                         "median_s": medians, "vs_baseline": ratios, "runs_s": times},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
