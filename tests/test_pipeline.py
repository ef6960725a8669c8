"""Provenance of a run composed in Python: unknown keywords are errors, a stage replaced by name keeps
(or resets) its options, and config.yaml / the model card record the strategies and options that ran,
so the CLI's --resume and `spectra export` work on such a run (tiny random Llama, real subprocesses)."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from train_fixtures import cli_env, config_dict, spectra_cmd, tiny_model_dir, write_text  # noqa: F401

from spectra_core.errors import ConfigError
from spectra_core.pipeline import Pipeline
from spectra_core.registry import get_registry


def test_an_unknown_keyword_is_an_error(tiny_model_dir, tmp_path):  # noqa: F811
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_dict(tiny_model_dir, tmp_path / "d.txt", tmp_path / "run")))
    with pytest.raises(ConfigError, match="unknown keyword argument.*scorrer") as err:
        Pipeline.from_yaml(path, scorrer="mp")
    assert "scorer" in err.value.hint
    with pytest.raises(ConfigError, match=r"Pipeline\(scorer=...\) got 3"):
        Pipeline.from_yaml(path, scorer=3)


def test_a_stage_replaced_by_name_keeps_its_options_only_for_the_same_strategy(tiny_model_dir, tmp_path):  # noqa: F811
    cfg = config_dict(tiny_model_dir, tmp_path / "d.txt", tmp_path / "run")
    cfg["scorer"] = {"name": "random", "options": {"seed": 3}}
    same = Pipeline.from_dict(cfg, scorer="random")
    assert same.scorer.options.seed == 3 and same.config.scorer.options.seed == 3
    other = Pipeline.from_dict(cfg, scorer="mp")
    assert other.config.scorer.name == "mp"
    assert other.config.scorer.options.model_dump() == get_registry().get("scorer", "mp").Options().model_dump()


def test_a_run_with_strategy_instances_records_them_and_resumes_and_exports_from_the_cli(
        tiny_model_dir, tmp_path):  # noqa: F811
    data = write_text(tmp_path / "d.txt", 120)
    cfg = config_dict(tiny_model_dir, data, tmp_path / "run", max_steps=2, save_every=1, eval_every=2)
    cfg["exporters"] = [{"name": "report"}]
    registry = get_registry()
    mp = registry.get("scorer", "mp")({"method": "svd"})  # an instance with a non-default option
    adapter = registry.get("exporter", "peft-adapter")()
    pipe = Pipeline.from_dict(cfg, scorer=mp, exporters=[adapter])
    run = pipe.train()
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert saved["scorer"] == {"name": "mp", "options": {"on_bad": "error", "method": "svd"}}
    assert saved["exporters"] == [{"name": "peft-adapter", "options": {}}]
    card = (pipe.export(run)["peft-adapter"] / "README.md").read_text()
    assert "scorer `mp`" in card and "## Strategies and options as run" in card and "name: mp" in card
    resumed = subprocess.run(spectra_cmd("train", str(run.run_dir / "config.yaml"), "--resume"), env=cli_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    exported = subprocess.run(spectra_cmd("export", str(run.run_dir)), env=cli_env(), capture_output=True, text=True,
                              timeout=600)
    assert exported.returncode == 0, exported.stderr
    assert "peft-adapter: wrote" in exported.stdout and (run.run_dir / "exports" / "adapter" / "README.md").is_file()
