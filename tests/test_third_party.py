"""Acceptance: a third-party plugin written only against the public API (examples/spectra-third-party:
one strategy per stage, no peft import) is pip-installed into a temp dir and trains the bundled
SmolLM2-135M end to end through `spectra train` — its gradient merger ties groups, its rebalancer
shrinks LoRAs, the core applies and records both, and its exporter writes its summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "spectra-third-party"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("third-party")
    shutil.copytree(EXAMPLE, root / "src")  # pip builds in the source tree
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(root / "site"), str(root / "src")], check=True, capture_output=True)
    return root / "site"


def config(out: Path) -> dict:
    return {
        "model": {"source": "bundled:smollm2-135m"},
        "quantizer": {"name": "example-float32"},
        "scorer": {"name": "example-rms"},
        "allocator": {"name": "example-every-other", "options": {"rank": 4, "alpha": 8}},
        "gradient_merger": {"name": "example-adjacent-pairs", "options": {"max_groups": 2}},
        "rebalancer": {"name": "example-shrink-quiet", "options": {"count": 2, "rank": 2}},
        "exporters": [{"name": "example-plan-summary"}, {"name": "peft-adapter"}],
        "targets": {"include": [r"self_attn\.(q|v)_proj"]},
        "data": {"path": str(REPO / "data" / "kjv-genesis-exodus.txt"), "max_length": 32, "max_samples": 400},
        "training": {"max_steps": 3, "batch_size": 2, "warmup_steps": 0, "eval_every": 3, "eval_batches": 1,
                     "save_every": 3, "log_every": 1, "seed": 0},
        "output_dir": str(out),
    }


def test_a_third_party_plugin_trains_the_bundled_model_through_spectra_train(site, tmp_path):
    cfg = tmp_path / "third-party.yaml"
    cfg.write_text(yaml.safe_dump(config(tmp_path / "run")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "spectra_core", "train", str(cfg)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    plan = json.loads((run / "plan.json").read_text())
    groups = {c["after"] for c in plan["history"] if c["strategy"] == "example-adjacent-pairs"}
    shrunk = [c for c in plan["history"] if c["strategy"] == "example-shrink-quiet"]
    assert groups == {"pair0", "pair1"}
    assert [(c["field"], c["before"], c["after"]) for c in shrunk] == [("rank", 4, 2)] * 2
    assert all("truncated SVD of BA" in c["reason"] for c in shrunk)  # the core says what it did
    summary = json.loads((run / "exports" / "plan-summary" / "summary.json").read_text())
    assert summary["groups"] == {g: [m["name"] for m in plan["modules"].values() if m["group"] == g]
                                 for g in ("pair0", "pair1")}
    assert sorted(summary["ranks"].values()).count(2) == 2
    from safetensors.torch import load_file

    weights = load_file(run / "final" / "adapter_model.safetensors")
    for c in shrunk:
        assert weights[f"base_model.model.{c['module']}.lora_A.weight"].shape[0] == 2
    for members in summary["groups"].values():  # a group's members carry its one shared LoRA
        a, b = (weights[f"base_model.model.{m}.lora_A.weight"] for m in members)
        assert a.equal(b)
