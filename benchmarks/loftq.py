"""How much of the NF4 base's quantization loss LoftQ's frozen corrections recover, at step 0.

SmolLM2-135M (bundled), the held-out split of benchmarks/methods.py (last 6 % of the KJV lines, 4 × 64
tokens, every held-out batch), evaluated by the spectra trainer before its first step:

- ``float``: float32 base (quantizer ``none``);
- ``nf4``: bitsandbytes NF4 base, LoRA with peft's default init (B = 0, so the base itself);
- ``nf4-loftq-r<R>``: NF4 base, hybrid all-inactive with every LoRA initialised by LoftQ at rank R.

Prints the held-out losses and the share of the float→NF4 gap each LoftQ rank closes.

    python benchmarks/loftq.py --ranks 16 64 --out benchmarks/loftq-results.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from common import run_measurements
from methods import split_data


def config(arm: str, rank: int, data: tuple[Path, Path], out: Path) -> dict[str, Any]:
    train, held = data
    loftq = arm.startswith("nf4-loftq")
    return {
        "model": {"source": "bundled:smollm2-135m"},
        "quantizer": {"name": "none"} if arm == "float" else {"name": "bnb-nf4"},
        "scorer": {"name": "spectrum"},
        "allocator": {"name": "spectrum-top", "options": {
            "top_fraction": 0.25, "rank": rank, "alpha": rank if loftq else 2 * rank, "mode": "all-inactive",
            "lora_init": {"name": "loftq" if loftq else "default"}}},
        "data": {"path": str(train), "validation_path": str(held), "max_length": 64},
        "training": {"max_steps": 1, "batch_size": 4, "warmup_steps": 0, "eval_every": 1, "save_every": 1,
                     "log_every": 1, "seed": 0},
        "exporters": [],
        "output_dir": str(out),
    }


def main() -> None:
    import torch

    from spectra_core.pipeline import Pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="loftq-") as tmp:
        data = split_data(Path(tmp) / "data")
        arms = [("float", 16), ("nf4", 16), *((f"nf4-loftq-r{r}", r) for r in args.ranks)]
        for arm, rank in arms:
            run = Pipeline.from_dict(config(arm, rank, data, Path(tmp) / arm)).train()
            results[arm] = run_measurements(run.run_dir)["eval_loss_start"]
    gap = results["nf4"] - results["float"]
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")
    for arm, loss in results.items():
        closed = "" if arm in ("float", "nf4") else f"   closes {(results['nf4'] - loss) / gap:6.1%} of the gap"
        print(f"{arm:16} held-out loss at step 0 {loss:.4f}{closed}")
    if args.out:
        args.out.write_text(json.dumps({"held_out_loss_step0": results, "nf4_gap": gap}, indent=2) + "\n")


if __name__ == "__main__":
    main()
