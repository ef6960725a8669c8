"""The README's main job, end to end on the real bundled SmolLM2-135M (shortened): train with the
hybrid method on the bundled KJV text, then load what it exported with stock peft and transformers.
One test, one training run: the slow suite's work-stealing scheduler would otherwise run a shared
module fixture once per worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_demo_trains_exports_and_stock_libraries_load_it(run_cli, tmp_path):
    out = tmp_path / "run"
    res = run_cli("train", REPO / "configs" / "demo.yaml", "training.max_steps=40", "training.eval_every=20",
                  "training.save_every=20", f"output_dir={out}", timeout=1800, env={"OMP_NUM_THREADS": "2"})
    assert res.returncode == 0, res.stderr[-3000:]
    check_training_and_exports(out, res.stdout)
    check_stock_libraries_load_the_exports(out)


def _eval_losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m["eval_loss"] for m in lines if "eval_loss" in m]


def check_training_and_exports(out: Path, stdout: str) -> None:
    losses = _eval_losses(out)
    assert losses[-1] < losses[0] - 0.05, losses
    assert "held-out loss" in stdout
    exports = out / "exports"
    for name in ("adapter", "merged", "report", "spectrum_unfrozen_parameters.yaml"):
        assert (exports / name).exists(), name
    plan = json.loads((out / "plan.json").read_text())
    assert any(c["strategy"] == "snr-reselect" for c in plan["history"])  # the rebalancer fired


def check_stock_libraries_load_the_exports(out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = json.loads((out / "exports" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    tok = AutoTokenizer.from_pretrained(out / "exports" / "merged")
    batch = tok(["In the beginning God created"], return_tensors="pt")
    merged = AutoModelForCausalLM.from_pretrained(out / "exports" / "merged").eval()
    # The merged model folds the adapter into the dequantized NF4 base: compare with stock peft on that base.
    from spectra_core.export.merged import dequantized_base
    from spectra_core.run import Run

    run = Run.load(out)
    peft_model = PeftModel.from_pretrained(dequantized_base(run), out / "exports" / "adapter").eval()
    with torch.no_grad():
        a, b = merged(**batch).logits, peft_model(**batch).logits
    assert (a - b).abs().max() / b.abs().max() < 1e-4
    assert Path(base_dir).is_dir()
