"""peft-adapter: stock peft loads the export and reproduces the trained model; failures write nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from export_fixtures import ALPHA4, GROUP, RANK8, config_data, logits, make_run, scores_of
from peft import PeftModel
from transformers import AutoModelForCausalLM

from spectra_core.config import load_config
from spectra_core.errors import InputError
from spectra_core.export.adapter import PeftAdapterExporter
from spectra_core.run import Run


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("adapter"))


def _run(fx, *, live: bool, plan=None) -> Run:
    config = load_config(data=config_data(fx.base_dir, fx.run_dir), registry=fx.registry)
    plan = plan or fx.plan
    return Run(fx.run_dir, config, plan, scores_of(plan), model=fx.model if live else None, registry=fx.registry)


def _stock_logits(fx, adapter):
    base = AutoModelForCausalLM.from_pretrained(fx.base_dir, dtype=torch.float32)
    return logits(PeftModel.from_pretrained(base, adapter).eval(), fx.base_dir)


@pytest.mark.parametrize("live", [True, False], ids=["live-model", "final-dir"])
def test_stock_peft_loads_export_with_trained_logits(fixture, tmp_path, live):
    out = PeftAdapterExporter().export(_run(fixture, live=live), tmp_path / "adapter")
    expected = logits(fixture.model, fixture.base_dir)
    torch.testing.assert_close(_stock_logits(fixture, out), expected, atol=1e-5, rtol=0)

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["rank_pattern"] == {RANK8.replace(".", "\\."): 8}
    assert config["alpha_pattern"] == {ALPHA4.replace(".", "\\."): 4}
    assert json.loads((out / "spectra_groups.json").read_text())["groups"] == {"g0": list(GROUP)}
    assert json.loads((out / "plan.json").read_text()) == json.loads(fixture.plan.to_json())
    card = (out / "README.md").read_text()
    assert str(fixture.base_dir) in card and "export-fixture" in card and "self_attn.q_proj" in card
    assert "- **LoRA init:** peft's default (A random, B = 0)" in card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp dir left beside it


def test_model_card_load_snippet_runs_as_written(fixture, tmp_path):
    """The card's Python block, run as a user would paste it (a fresh interpreter, another directory),
    loads the base and the adapter with stock peft and generates."""
    out = PeftAdapterExporter().export(_run(fixture, live=False), tmp_path / "adapter")
    card = (out / "README.md").read_text()
    snippet = card.split("## Load", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert f'adapter_dir = "{out.resolve()}"' in snippet
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "the snippet prints the generated text"


def test_adapter_not_matching_plan_is_refused_and_nothing_changes(fixture, tmp_path):
    """The adapter is written, then checked against the plan: the failure is midway and must leave
    neither a half-written destination nor a temp directory, and an earlier export untouched."""
    stale = fixture.plan.model_copy(deep=True)
    stale.modules[RANK8].rank = 4
    with pytest.raises(InputError, match=f"{RANK8}: rank 4 in the plan, 8 in the adapter"):
        PeftAdapterExporter().export(_run(fixture, live=True, plan=stale), tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []

    previous = PeftAdapterExporter().export(_run(fixture, live=False), tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    with pytest.raises(InputError):
        PeftAdapterExporter().export(_run(fixture, live=False, plan=stale), tmp_path / "adapter")
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_missing_final_adapter_is_a_clear_error(fixture, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(fixture.run_dir, run_dir)
    (run_dir / "final" / "adapter_model.safetensors").unlink()
    run = _run(fixture, live=False)
    run.run_dir = run_dir
    with pytest.raises(InputError, match="missing adapter_model.safetensors"):
        PeftAdapterExporter().export(run, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
