"""The trainer in-process on a tiny random Llama: run layout, optimizer groups, errors, resume, hooks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import config_dict, make_plan, tiny_model_dir, write_text  # noqa: F401

from spectra_core.adapters import lora_layers, lora_parameters
from spectra_core.changes import Tie, deactivate, resize
from spectra_core.data import collate
from spectra_core.errors import InputError, PluginError, TrainingError
from spectra_core.pipeline import Pipeline
from spectra_core.plan import PlanChange
from spectra_core.run import Run
from spectra_core.strategies import GradientMerger, Rebalancer, StrategyOptions
from spectra_core.training.loss import causal_lm_loss
from spectra_core.training.metrics import read_metrics
from spectra_core.training.modeling import build_peft_model
from spectra_core.training.optim import make_optimizer


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_text(tmp_path_factory.mktemp("data") / "d.txt", 200)


def _pipe(model_dir, data, out, **training) -> Pipeline:
    return Pipeline.from_dict(config_dict(model_dir, data, out, **training))


def test_all_inactive_params_frozen_and_not_in_optimizer(tiny_model_dir):
    plan = make_plan(tiny_model_dir, mode="all-inactive", active="attn", lr_scale=0.5)
    plan.modules["model.layers.0.mlp.up_proj"].active = True
    model = build_peft_model(Pipeline.from_dict(config_dict(tiny_model_dir, tiny_model_dir, "x")).quantizer
                             .load(tiny_model_dir), plan)
    layers = lora_layers(model)
    assert len(layers) == 14  # every target carries a LoRA in all-inactive mode
    opt = make_optimizer(model, plan, 1e-3, 0.0)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for name, layer in layers.items():
        for p in lora_parameters(layer):
            assert p.requires_grad == plan.modules[name].active
            assert (id(p) in in_opt) == plan.modules[name].active
    assert {g["lr_scale"]: g["lr"] for g in opt.param_groups} == {0.5: 5e-4, 1.0: 1e-3}
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_chunked_loss_matches_model_loss(tiny_model_dir, data_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spectra_core.config import DataConfig
    from spectra_core.data import load_data

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    data = load_data(DataConfig(path=str(data_file), max_length=32), AutoTokenizer.from_pretrained(tiny_model_dir))
    batch = collate(data.train[:3], 0)
    batch["labels"][0, :10] = -100
    total, n = causal_lm_loss(model, batch, chunk_tokens=7)
    ref = model(**batch).loss
    torch.testing.assert_close(total / n, ref, rtol=1e-5, atol=1e-5)


def test_run_layout_and_reload(tiny_model_dir, data_file, tmp_path):
    pipe = _pipe(tiny_model_dir, data_file, tmp_path / "run", max_steps=4, save_every=2, keep_checkpoints=1)
    run = pipe.train(make_plan(tiny_model_dir, active="top"))
    root = tmp_path / "run"
    assert {p.name for p in root.iterdir()} >= {"config.yaml", "plan.json", "metrics.jsonl", "checkpoints", "final"}
    assert [p.name for p in (root / "checkpoints").iterdir()] == ["step-00000004"]
    assert {p.suffix for p in (root / "checkpoints" / "step-00000004").iterdir()} == {".safetensors", ".json"}
    assert (root / "final" / "adapter_model.safetensors").is_file()
    evals = [r for r in read_metrics(root / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 4]
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        live = run.model(input_ids=ids).logits
        loaded = Run.load(root).peft_model()(input_ids=ids).logits
    torch.testing.assert_close(live, loaded)
    # layers below the only adapted layer built no graph: frozen layer 0 LoRA-free, top layer trained
    adapter = load_file(root / "final" / "adapter_model.safetensors")
    assert adapter and all("layers.1." in k for k in adapter)


def test_rank_larger_than_module(tiny_model_dir, data_file, tmp_path):
    plan = make_plan(tiny_model_dir, rank=40)  # k_proj is 32×64
    with pytest.raises(InputError, match=r"rank 40 of model\.layers\.0\.self_attn\.k_proj exceeds") as err:
        _pipe(tiny_model_dir, data_file, tmp_path / "run").train(plan)
    assert "≤ 32" in str(err.value)


def test_existing_output_dir_refused_then_overwritten(tiny_model_dir, data_file, tmp_path):
    plan = make_plan(tiny_model_dir, active="top")
    _pipe(tiny_model_dir, data_file, tmp_path / "run", max_steps=2).train(plan)
    with pytest.raises(TrainingError, match="already holds a run") as err:
        _pipe(tiny_model_dir, data_file, tmp_path / "run", max_steps=2).train(plan)
    assert "--resume" in str(err.value) and "--overwrite" in str(err.value)
    run = _pipe(tiny_model_dir, data_file, tmp_path / "run", max_steps=3).train(plan, overwrite=True)
    assert max(r["step"] for r in read_metrics(run.run_dir / "metrics.jsonl")) == 3


def test_missing_data_section_is_refused_before_the_scan(tiny_model_dir, tmp_path):
    """No data: the error comes before any weight is read (this model folder has no weights to scan)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = config_dict(model, tmp_path / "unused.txt", tmp_path / "run")
    del cfg["data"]
    with pytest.raises(InputError, match="the config has no data section") as err:
        Pipeline.from_dict(cfg).train()
    assert "add data:" in err.value.hint and not (tmp_path / "run").exists()


def test_resume_with_changed_config_shows_difference(tiny_model_dir, data_file, tmp_path):
    _pipe(tiny_model_dir, data_file, tmp_path / "run", max_steps=2).train(make_plan(tiny_model_dir, active="top"))
    with pytest.raises(TrainingError, match="config differs") as err:
        _pipe(tiny_model_dir, data_file, tmp_path / "run", max_steps=2, learning_rate=5e-3).train(resume=True)
    assert "training.learning_rate: 0.001 (run) -> 0.005 (now)" in str(err.value)
    # runtime keys may change
    _pipe(tiny_model_dir, data_file, tmp_path / "run", max_steps=2, eval_every=1).train(resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model_dir, data_file, tmp_path):
    cfg = config_dict(tiny_model_dir, data_file, tmp_path / "run", max_steps=10, learning_rate=1e12,
                      max_grad_norm=None, save_every=1, warmup_steps=0, schedule="constant")
    cfg["quantizer"] = {"name": "none", "options": {"dtype": "float16"}}
    with pytest.raises(TrainingError, match=r"NaN/inf at step (\d+)") as err:
        Pipeline.from_dict(cfg).train(make_plan(tiny_model_dir))
    step = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept[-1] == f"step-{step - 1:08d}"
    assert f"step-{step - 1:08d}" in str(err.value)
    assert not (tmp_path / "run" / "final").exists()


def test_resume_is_bitwise_identical(tiny_model_dir, data_file, tmp_path):
    plan = make_plan(tiny_model_dir, mode="all-inactive", active="attn", lr_scale=0.5)
    kw = {"max_steps": 6, "save_every": 2, "keep_checkpoints": 3, "gradient_accumulation": 2, "weight_decay": 0.01}
    _pipe(tiny_model_dir, data_file, tmp_path / "a", **kw).train(plan.model_copy(deep=True))
    _pipe(tiny_model_dir, data_file, tmp_path / "b", **kw).train(plan.model_copy(deep=True))
    shutil.rmtree(tmp_path / "b" / "final")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000006")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000004")
    _pipe(tiny_model_dir, data_file, tmp_path / "b", **kw).train(resume=True)
    a = load_file(tmp_path / "a" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(tmp_path / "a" / "metrics.jsonl")[-1]["eval_loss"] == \
        read_metrics(tmp_path / "b" / "metrics.jsonl")[-1]["eval_loss"]


class TieQ(GradientMerger):
    """Test merger: the q_proj LoRAs of layers 0 and 1 share one set of parameters; it averages their gradient."""

    name = "tie-q"
    calls: list[str] = []
    A, B = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"

    def calibrate(self, session):
        assert len(list(session.calibration_batches(2))) == 2
        self.calls.append("calibrate")
        return [Tie(group="q", modules=[self.A, self.B], reason="test")]

    def merge_gradients(self, session, groups):
        self.calls.append("merge")
        assert [g.members for g in groups] == [[self.A, self.B]] and groups[0].per_member is None
        return {g.group: {f: t / 2 for f, t in g.summed.items()} for g in groups}


class DropOne(Rebalancer):
    """Test rebalancer: proposes to deactivate one ungrouped module per call."""

    name = "drop-one"

    class Options(StrategyOptions):
        every_steps: int | None = 2

    steps: list[int] = []

    def rebalance(self, session):
        self.steps.append(session.step)
        name = [m.name for m in session.plan.active() if m.group is None][0]
        assert session.adapter(name).rank > 0
        return [deactivate(name, "test")]


def test_merger_and_rebalancer_hooks(tiny_model_dir, data_file, tmp_path):
    cfg = config_dict(tiny_model_dir, data_file, tmp_path / "run", max_steps=6, gradient_accumulation=2)
    merger, rebalancer = TieQ(), DropOne()
    pipe = Pipeline.from_dict(cfg, gradient_merger=merger, rebalancer=rebalancer)
    plan = make_plan(tiny_model_dir, mode="all-inactive", active="attn")
    run = pipe.train(plan)
    assert merger.calls[0] == "calibrate" and merger.calls.count("merge") == 12
    assert rebalancer.steps == [2, 4, 6]
    layers = lora_layers(run.model)
    assert layers[TieQ.A].lora_A["default"].weight is layers[TieQ.B].lora_A["default"].weight
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert [c["module"] for c in saved["history"] if c["strategy"] == "tie-q"] == [TieQ.A, TieQ.B]
    dropped = [c for c in saved["history"] if c["strategy"] == "drop-one"]
    assert [c["step"] for c in dropped] == [2, 4, 6]  # recorded once each, by the core
    for c in dropped:
        assert not any(p.requires_grad for p in lora_parameters(layers[c["module"]]))
    assert any(r.get("event") == "rebalance" for r in read_metrics(tmp_path / "run" / "metrics.jsonl"))
    assert PlanChange.model_validate(dropped[0]).field == "active"
    assert dropped[0]["reason"] == "test; frozen; its update stays as a frozen LoRA"


def test_invalid_proposals_are_refused_naming_the_strategy(tiny_model_dir, data_file, tmp_path):
    class Bogus(DropOne):
        name = "bogus"

        def rebalance(self, session):
            return [resize("model.layers.0.self_attn.q_proj", 10_000, "too big")]

    cfg = config_dict(tiny_model_dir, data_file, tmp_path / "run", max_steps=2)
    with pytest.raises(PluginError, match="'bogus' proposed changes the core cannot apply.*exceeds the smaller"):
        Pipeline.from_dict(cfg, rebalancer=Bogus()).train(make_plan(tiny_model_dir, mode="all-inactive"))


def test_scan_plan_train_in_python_keeps_the_scan_for_the_exporters(tiny_model_dir, tmp_path):
    cfg = config_dict(tiny_model_dir, write_text(tmp_path / "d.txt", 60), tmp_path / "run", max_steps=1)
    cfg["exporters"] = [{"name": "spectrum-yaml"}]
    pipe = Pipeline.from_dict(cfg)
    scores = pipe.scan()
    run = pipe.train(pipe.plan(scores))  # no scores= : the pipeline hands over its scan
    assert Run.load(run.run_dir).scores == scores
    text = pipe.export(run)["spectrum-yaml"].read_text()
    assert all(m.name in text for m in run.plan.active())
