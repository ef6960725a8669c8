"""Config loading: method defaults, overrides, and every bad-input path named with its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spectra_core.config import apply_overrides, load_config
from spectra_core.errors import ConfigError


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def _base(model_dir: Path) -> str:
    return f"method: hybrid\nmodel:\n  source: {model_dir}\nscorer:\n  name: random\nexporters: []\n"


def test_method_fills_defaults_and_explicit_sections_win(tmp_path, model_dir):
    cfg = load_config(_write(tmp_path, _base(model_dir) + "allocator:\n  options:\n    top_fraction: 0.5\n"))
    assert cfg.quantizer.name == "bnb-nf4"  # from the method
    assert cfg.allocator.name == "spectrum-top"
    assert cfg.allocator.options.top_fraction == 0.5  # explicit
    assert cfg.allocator.options.rank == 16  # method default kept beside it
    assert cfg.scorer.name == "random"


def test_overrides_set_nested_values_and_lists(tmp_path, model_dir):
    cfg = load_config(_write(tmp_path, _base(model_dir)),
                      overrides=["training.max_steps=7", "allocator.options.rank=4", "output_dir=x/y"])
    assert cfg.training.max_steps == 7 and cfg.allocator.options.rank == 4 and cfg.output_dir == "x/y"
    data = apply_overrides({"exporters": [{"name": "a"}]}, ["exporters.0.name=b"])
    assert data == {"exporters": [{"name": "b"}]}


def test_override_without_equals(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(_write(tmp_path, _base(model_dir)), overrides=["training.max_steps"])


@pytest.mark.parametrize(("extra", "expected"), [
    ("bogus: 1\n", ["bogus", "unknown key"]),
    ("scorer:\n  name: nope\n", ["scorer (line 5)", "unknown scorer 'nope'", "available:", "random"]),
    ("allocator:\n  options:\n    rank: many\n", ["allocator.options.rank", "valid integer"]),
    ("allocator:\n  options:\n    rank: -2\n", ["allocator.options.rank", "greater than 0"]),
    ("allocator:\n  options:\n    top_fraction: 1.5\n", ["allocator.options.top_fraction", "less than or equal to 1"]),
    ("allocator:\n  options:\n    top_fraction: 0\n", ["allocator.options.top_fraction", "greater than 0"]),
    ("training:\n  max_stepz: 3\n", ["training.max_stepz", "unknown key"]),
])
def test_bad_values_are_reported_with_their_path(tmp_path, model_dir, extra, expected):
    text = _base(model_dir)
    if extra.startswith("scorer:"):
        text = text.replace("scorer:\n  name: random\n", "")
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text + extra))
    for fragment in expected:
        assert fragment in str(err.value)


def test_errors_carry_line_numbers(tmp_path, model_dir):
    with pytest.raises(ConfigError, match=r"allocator.options.rank \(line 9\)"):
        load_config(_write(tmp_path, _base(model_dir) + "allocator:\n  options:\n    rank: -1\n"))


def test_missing_model_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(_write(tmp_path, "method: hybrid\nmodel: {source: /no/such/model}\nscorer: {name: random}\n"))


def test_cli_validate_malformed_yaml_exit_2(run_cli, tmp_path):
    p = _write(tmp_path, "model: [unclosed\n")
    res = run_cli("config", "validate", p)
    assert res.returncode == 2
    assert "not valid YAML" in res.stderr and str(p) in res.stderr and "Traceback" not in res.stderr


def test_cli_validate_reports_every_error(run_cli, tmp_path, model_dir):
    p = _write(tmp_path, _base(model_dir) + "bogus: 1\ntraining:\n  batch_size: 0\n")
    res = run_cli("config", "validate", p)
    assert res.returncode == 2
    assert "2 error(s)" in res.stderr and "bogus (line 7)" in res.stderr and "training.batch_size (line 9)" in res.stderr


def test_cli_validate_ok(run_cli, tmp_path, model_dir):
    res = run_cli("config", "validate", _write(tmp_path, _base(model_dir)))
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout


def test_schema_includes_plugin_options(run_cli):
    res = run_cli("config", "schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    text = json.dumps(schema)
    assert "top_fraction" in text  # the hybrid plugin's allocator options
    assert "bnb-nf4" in text and "snr-reselect" in text
    assert set(schema["properties"]) >= {"model", "quantizer", "scorer", "allocator", "exporters", "training"}
