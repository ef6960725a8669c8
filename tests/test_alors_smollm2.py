"""Acceptance on real weights: `spectra train` with the alors demo config on SmolLM2-135M 4-bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

CONFIG = Path(__file__).resolve().parents[1] / "plugins" / "alors" / "configs" / "alors-demo.yaml"


@pytest.mark.slow
def test_spectra_train_alors_on_smollm2(run_cli, tmp_path):
    from peft import PeftModel

    from spectra_core.builtins.quantizers import BnbNF4Quantizer
    from spectra_core.models import convert_bundled
    from spectra_core.adapters import lora_layers

    out = tmp_path / "run"
    result = run_cli("train", CONFIG, "training.max_steps=6", "training.eval_every=6", "training.save_every=6",
                     "training.eval_batches=2", "rebalancer.options.every_steps=3", f"output_dir={out}",
                     timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "rebalance"] == [3, 6]
    report = json.loads((out / "exports" / "report" / "report.json").read_text())
    resize = [c for c in report["history"] if c["strategy"] == "alors-resize"]
    assert {c["field"] for c in resize} >= {"score"}
    plan = report["plan"]["modules"]
    assert {m["tier"] for m in plan} == {"high", "medium", "low"}
    assert "ranks" in report["figures"]

    adapter = out / "exports" / "adapter"
    base = BnbNF4Quantizer().load(convert_bundled("smollm2-135m"))
    model = PeftModel.from_pretrained(base, adapter).eval()
    ranks = {n: layer.r["default"] for n, layer in lora_layers(model).items()}
    assert ranks == {m["module"]: m["rank"] for m in plan if m["rank"]}
    ids = torch.tensor([[1, 450, 3474, 310, 278, 8024]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert torch.isfinite(adapted).all() and not torch.equal(adapted, plain)
