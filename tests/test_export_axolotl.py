"""The axolotl exporter: the YAML's LoRA keys build, through axolotl's documented mapping onto
``peft.LoraConfig``, exactly the plan's active modules at their ranks and alphas; axolotl's own config
validation accepts the file (axolotl installed ``--no-deps`` into a temp dir; skipped if it cannot be)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from export_fixtures import ALPHA4, FROZEN, GROUP, RANK8, config_data, make_run
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from spectra_core.config import load_config
from spectra_core.errors import InputError
from spectra_core.export.axolotl import AxolotlExporter
from spectra_core.run import Run

AXOLOTL = "axolotl==0.19.0"  # the newest release for Python 3.11 (0.20+ need 3.12)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("axolotl"))


def export(fx, tmp_path: Path, plan=None, **config) -> Path:
    data = config_data(fx.base_dir, fx.run_dir) | config
    run = Run(fx.run_dir, load_config(data=data, registry=fx.registry), plan or fx.plan, None, registry=fx.registry)
    return AxolotlExporter().export(run, tmp_path / "axolotl.yaml")


def lora_config_as_axolotl_builds_it(cfg: dict) -> LoraConfig:
    """axolotl's loaders/adapter.py: LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=..., and
    rank_pattern / alpha_pattern / use_rslora from lora_rank_pattern / lora_alpha_pattern / peft_use_rslora)."""
    return LoraConfig(r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], target_modules=cfg["lora_target_modules"],
                      lora_dropout=cfg["lora_dropout"], rank_pattern=cfg["lora_rank_pattern"],
                      alpha_pattern=cfg["lora_alpha_pattern"], use_rslora=cfg["peft_use_rslora"],
                      bias="none", task_type="CAUSAL_LM")


def test_yaml_builds_the_plans_active_modules_with_their_ranks_and_scales(fixture, tmp_path):
    path = export(fixture, tmp_path, data={"path": str(fixture.base_dir / "config.json"), "max_length": 64})
    text = path.read_text()
    cfg = yaml.safe_load(text)
    assert (cfg["adapter"], cfg.get("load_in_4bit")) == ("lora", None)  # the fixture's quantizer is `none`
    base = AutoModelForCausalLM.from_pretrained(fixture.base_dir, dtype=torch.float32)
    model = get_peft_model(base, lora_config_as_axolotl_builds_it(cfg))
    built = {n.removeprefix("base_model.model."): (m.r["default"], m.scaling["default"])
             for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    expected = {m.name: (m.rank, m.alpha / m.rank) for m in fixture.plan.active()}
    assert built == expected
    assert FROZEN not in built and built[RANK8][0] == 8 and built[ALPHA4][1] == 4 / 4
    assert "NOT carried over: 1 shared-LoRA groups" in text and GROUP[0] in cfg["lora_target_modules"]
    assert cfg["datasets"] == [{"path": str(fixture.base_dir / "config.json"), "ds_type": "json",
                                "type": "completion", "field": "text"}]
    assert (cfg["sequence_len"], cfg["max_steps"], cfg["learning_rate"]) == (64, 200, 2e-4)


def test_qlora_keys_and_caveats_follow_the_run(fixture, tmp_path):
    plan = fixture.plan.model_copy(deep=True)
    plan.use_rslora = True
    plan.modules[RANK8].lr_scale = 2.5
    path = export(fixture, tmp_path, plan=plan, quantizer={"name": "bnb-nf4"})
    cfg = yaml.safe_load(path.read_text())
    assert cfg["adapter"] == "qlora" and cfg["load_in_4bit"] is True and cfg["peft_use_rslora"] is True
    assert cfg["bnb_config_kwargs"] == {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
    assert "per-module learning-rate scales [1.0, 2.5]" in path.read_text()


def test_non_integer_alpha_is_refused_and_nothing_is_written(fixture, tmp_path):
    plan = fixture.plan.model_copy(deep=True)
    plan.modules[ALPHA4].alpha = 4.5
    with pytest.raises(InputError, match=f"{ALPHA4}: lora_alpha 4.5 is not a positive integer"):
        export(fixture, tmp_path, plan=plan)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def axolotl_path(tmp_path_factory) -> Path:
    """axolotl and the one package its config validation imports beyond ours, installed --no-deps."""
    target = tmp_path_factory.mktemp("axolotl-pkg")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           AXOLOTL, "addict"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"{AXOLOTL} does not install here: {done.stderr.strip()[-300:]}")
    return target


def test_axolotl_validates_the_exported_config(fixture, tmp_path, axolotl_path):
    data = tmp_path / "train.txt"
    data.write_text("w1 w2 w3\n")
    path = export(fixture, tmp_path, quantizer={"name": "bnb-nf4"}, data={"path": str(data)})
    script = ("import sys, yaml\n"
              "from axolotl.utils.config import validate_config\n"
              "from axolotl.utils.dict import DictDefault\n"
              "cfg = validate_config(DictDefault(yaml.safe_load(open(sys.argv[1]))))\n"
              "print(cfg.adapter, cfg.lora_r, sorted(cfg.lora_rank_pattern.values()), len(cfg.lora_target_modules))\n")
    env = {"PYTHONPATH": str(axolotl_path), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env,
                          timeout=300)
    if "ModuleNotFoundError" in done.stderr:
        pytest.skip(f"axolotl's config validation needs a package not installed here: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["qlora", "4", "[8]", str(len(fixture.plan.active()))]
