"""Acceptance on real weights (slow): `spectra train` with the SGM demo config on SmolLM2-135M 4-bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "plugins" / "sgm" / "configs" / "sgm-demo.yaml"


@pytest.mark.slow
def test_sgm_demo_calibrates_groups_trains_and_exports(run_cli, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from spectra_core.registry import get_registry
    from spectra_core.run import Run
    from spectra_core.adapters import factors, lora_layers

    out = tmp_path / "run"
    proc = run_cli("train", CONFIG, "training.max_steps=4", "training.eval_every=4", f"output_dir={out}",
                   timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "export peft-adapter" in proc.stdout and "held-out loss" in proc.stdout
    run = Run.load(out)
    groups = run.plan.groups()
    assert groups and run.plan.trainable_parameters() < sum(m.lora_params() for m in run.plan.active())
    report = json.loads((out / "exports" / "report" / "report.json").read_text())
    assert report["parameters"]["groups"] == len(groups) and "groups" in report["figures"]
    assert (out / "sgm" / "similarity.png").is_file()

    loaded = run.peft_model()  # spectra: base + final/ adapter, groups re-tied
    lora = lora_layers(loaded)
    for members in groups.values():
        assert len({factors(lora[m])["A"].data_ptr() for m in members}) == 1
    quantizer = get_registry().create("quantizer", run.config.quantizer.name, run.config.quantizer.options)
    stock = PeftModel.from_pretrained(quantizer.load(run.base_model_dir()), out / "exports" / "adapter").eval()
    batch = AutoTokenizer.from_pretrained(run.base_model_dir())("In the beginning God created", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(stock(**batch).logits, loaded(**batch).logits)
