"""SGM through the trainer on a 4-bit (bnb NF4) tiny random Llama: calibrate, group, train, export,
stock-peft load with equal logits, reload in spectra with the ties restored; 2-process DDP on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from spectra_core.pipeline import Pipeline
from spectra_core.run import Run
from spectra_core.adapters import factors
from train_fixtures import cli_env, config_dict, make_tiny_model, write_text

PROMPT = "The king went over the river and spoke unto all the land."


def sgm_config(root: Path, **merger) -> dict:
    cfg = config_dict(make_tiny_model(root / "model", layers=4), write_text(root / "data.txt", n=200), root / "run",
                      max_steps=4)
    cfg["quantizer"] = {"name": "bnb-nf4"}
    cfg["allocator"]["options"]["top_fraction"] = 1.0
    cfg["gradient_merger"] = {"name": "cosine-groups",
                              "options": {"threshold": -1.0, "max_group_size": 2, "calibration_batches": 2, **merger}}
    cfg["exporters"] = [{"name": "peft-adapter"}, {"name": "merged"}, {"name": "report"}]
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sgm-train")
    pipe = Pipeline.from_dict(sgm_config(root))
    run = pipe.train()
    return pipe, run, pipe.export(run)


def test_resume_continues_the_tied_run_bitwise(trained, tmp_path):
    import shutil

    from safetensors.torch import load_file

    pipe, run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run.run_dir, copy, ignore=shutil.ignore_patterns("exports"))
    shutil.rmtree(copy / "checkpoints" / "step-00000004")
    shutil.rmtree(copy / "final")
    resumed = Pipeline.from_dict(pipe.config.model_dump(mode="json") | {"output_dir": str(copy)}).train(resume=True)
    assert resumed.plan.groups() == run.plan.groups()
    assert_tied(resumed.model, run.plan.groups())
    original, again = (load_file(d / "final" / "adapter_model.safetensors") for d in (run.run_dir, copy))
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)


def logits(model, model_dir: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(model_dir)(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def assert_tied(model, groups: dict[str, list[str]]) -> None:
    from spectra_core.adapters import lora_layers

    lora = lora_layers(model)
    for members in groups.values():
        for f in ("A", "B"):
            assert len({factors(lora[m])[f].data_ptr() for m in members}) == 1, members


def test_calibration_groups_the_plan_and_writes_the_similarity(trained):
    _, run, _ = trained
    groups = run.plan.groups()
    assert len(groups) == 14 and all(len(ms) == 2 for ms in groups.values())  # 7 types × 4 layers, pairs
    assert {c.after for c in run.plan.history if c.field == "group"} == set(groups)
    saved = json.loads((run.run_dir / "plan.json").read_text())
    assert {m["name"]: m["group"] for m in saved["modules"].values() if m["group"]} == {
        m: g for g, ms in groups.items() for m in ms}
    record = json.loads((run.run_dir / "sgm" / "similarity.json").read_text())
    assert record["groups"] == groups and len(record["buckets"]) == 7
    assert (run.run_dir / "sgm" / "similarity.png").stat().st_size > 1000


def test_each_group_trains_one_shared_lora(trained):
    _, run, _ = trained
    assert_tied(run.model, run.plan.groups())
    trainable = {id(p): p for p in run.model.parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == run.plan.trainable_parameters()
    assert run.plan.trainable_parameters() * 2 == sum(m.lora_params() for m in run.plan.active())
    metrics = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "loss" in r] == [1, 2, 3, 4]


def test_stock_peft_loads_the_adapter_with_equal_logits(trained):
    from peft import PeftModel

    pipe, run, exports = trained
    adapter = exports["peft-adapter"]
    assert json.loads((adapter / "spectra_groups.json").read_text())["groups"] == run.plan.groups()
    ours = logits(run.model, pipe.model_dir())
    stock = PeftModel.from_pretrained(pipe.quantizer.load(pipe.model_dir()), adapter).eval()
    assert torch.equal(logits(stock, pipe.model_dir()), ours)
    from spectra_core.adapters import lora_layers

    lora = lora_layers(stock)
    members = next(iter(run.plan.groups().values()))
    assert factors(lora[members[0]])["A"].data_ptr() != factors(lora[members[1]])["A"].data_ptr()
    assert torch.equal(factors(lora[members[0]])["A"], factors(lora[members[1]])["A"])


def test_spectra_reload_restores_the_ties(trained):
    pipe, run, _ = trained
    loaded = Run.load(run.run_dir).peft_model()
    assert_tied(loaded, run.plan.groups())
    assert torch.equal(logits(loaded, pipe.model_dir()), logits(run.model, pipe.model_dir()))


def test_report_and_merged_export(trained):
    _, _, exports = trained
    report = json.loads((exports["report"] / "report.json").read_text())
    assert report["parameters"]["groups"] == 14 and report["figures"]["groups"] == "groups.png"
    assert (exports["merged"] / "model.safetensors").is_file()


def test_two_process_ddp_with_project_merge_and_regroup(tmp_path):
    cfg = sgm_config(tmp_path, merge="project")
    cfg["rebalancer"] = {"name": "cosine-regroup",
                         "options": {"every_steps": 2, "threshold": -1.0, "max_group_size": 4,
                                     "calibration_batches": 1}}
    cfg["training"] |= {"max_steps": 3, "save_every": 10, "eval_every": 10}
    cfg["exporters"] = [{"name": "peft-adapter"}]
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "spectra_core", "train", str(path)], capture_output=True, text=True,
                          env=cli_env(), timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    strategies = {c["strategy"] for c in plan["history"]}
    assert strategies == {"cosine-groups", "cosine-regroup"}
    groups: dict[str, list[str]] = {}
    for m in plan["modules"].values():
        if m["group"]:
            groups.setdefault(m["group"], []).append(m["name"])
    assert groups and all(len(ms) == 4 for ms in groups.values())
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "final" / "adapter_model.safetensors")
    for members in groups.values():
        keys = [f"base_model.model.{m}.lora_B.weight" for m in members]
        assert all(torch.equal(weights[keys[0]], weights[k]) for k in keys)
        assert weights[keys[0]].abs().sum() > 0
