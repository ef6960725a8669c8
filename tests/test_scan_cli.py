"""`spectra scan` / `spectra select` as real subprocesses: outputs, reference files, bad input."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from spectra_core.scores import Scores
from spectra_core.spectral.formats import load_scores, unfrozen_yaml
from spectra_core.spectral.selection import top_percent
from tests.scan_fixtures import write_checkpoint

pytest_plugins = ["scan_fixtures"]


@pytest.fixture
def cache_env(tmp_path):
    return {"SPECTRA_SCAN_CACHE": str(tmp_path / "cache")}


def test_scan_writes_consistent_outputs_and_uses_cache(run_cli, small_real_dir, tmp_path, cache_env):
    out = tmp_path / "out"
    res = run_cli("scan", small_real_dir, "--out", out, "--top-percent", "34", env=cache_env)
    assert res.returncode == 0, res.stderr
    assert "mlp.down_proj" in res.stderr and "process(es)" in res.stderr
    scores = Scores.load(out / "scores.json")
    assert scores.scorer == "spectrum" and scores.fingerprint and len(scores.modules) == 3 * 9 + 2
    flat = load_scores(out / "snr_results.json")
    assert [(m.name, m.score) for m in flat.modules] == [(m.name, m.score) for m in scores.modules]
    yaml_text = (out / "unfrozen_parameters_34percent.yaml").read_text()
    assert yaml_text == unfrozen_yaml(top_percent(scores, 34))
    selection = json.loads((out / "selection.json").read_text())
    assert selection["lora_targets"] and all("norm" not in n for n in selection["lora_targets"])
    assert all(len(v) == 1 for t, v in selection["selected"].items() if t.startswith(("mlp", "self_attn")))
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    again = run_cli("scan", small_real_dir, "--out", tmp_path / "out2", "--top-percent", "34", "--quiet", env=cache_env)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out2" / "scores.json").read_text() == (out / "scores.json").read_text()
    assert list((tmp_path / "cache").glob("*.json"))


def test_scan_mp_with_types_and_select_on_its_result(run_cli, small_real_dir, tmp_path, cache_env):
    out = tmp_path / "mp"
    res = run_cli("scan", small_real_dir, "--scorer", "mp", "--types", "self_attn.*,mlp.up_proj", "--out", out,
                  "--quiet", env=cache_env)
    assert res.returncode == 0, res.stderr
    scores = Scores.load(out / "scores.json")
    assert {m.type for m in scores.modules} == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                "self_attn.o_proj", "mlp.up_proj"}
    assert all(math.isfinite(m.score) and m.score >= 0 for m in scores.modules)
    yaml_out = tmp_path / "sel.yaml"
    sel = run_cli("select", out / "scores.json", "--top-percent", "70", "--out", yaml_out)
    assert sel.returncode == 0, sel.stderr
    assert yaml_out.read_text() == unfrozen_yaml(top_percent(scores, 70))


def test_select_reproduces_reference_yaml(run_cli, spectrum_reference, tmp_path):
    slug = "meta-llama-Meta-Llama-3.1-8B-Instruct"
    res = run_cli("select", spectrum_reference / "model_snr_results" / f"snr_results_{slug}.json", "--top-percent", "50")
    assert res.returncode == 0, res.stderr
    assert res.stdout == (spectrum_reference / f"snr_results_{slug}_unfrozenparameters_50percent.yaml").read_text()


def _bad_checkpoints(root, tensors):
    """Directories with one defect each, and the text the error must contain."""
    cases = {}
    good = {k: tensors[k] for k in ("model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj")}
    d = write_checkpoint(root / "truncated", good)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (d, "truncated")
    d = root / "junk"
    d.mkdir()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10) + b"not json!!")
    cases["junk"] = (d, "not valid JSON")
    d = write_checkpoint(root / "shard", good, shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    cases["shard"] = (d, "model-00002-of-00002.safetensors")
    nan = good["model.layers.0.mlp.up_proj"].clone()
    nan[1, 2] = float("inf")
    cases["nan"] = (write_checkpoint(root / "nan", {**good, "model.layers.0.mlp.up_proj": nan}),
                    "model.layers.0.mlp.up_proj contains NaN or Inf")
    return cases


def test_bad_checkpoints_fail_clearly_and_write_nothing(run_cli, smollm2_tensors, tmp_path, cache_env):
    for label, (path, message) in _bad_checkpoints(tmp_path, smollm2_tensors).items():
        out = tmp_path / f"out-{label}"
        res = run_cli("scan", path, "--out", out, "--quiet", env=cache_env)
        assert res.returncode == 2, (label, res.stderr)
        assert message in res.stderr and "Traceback" not in res.stderr, (label, res.stderr)
        assert not out.exists(), label
    res = run_cli("scan", tmp_path / "missing-model", "--out", tmp_path / "o", env=cache_env)
    assert res.returncode == 2 and "model not found" in res.stderr


def test_special_weights(run_cli, tmp_path, cache_env):
    g = torch.Generator().manual_seed(0)
    d = write_checkpoint(tmp_path / "special", {
        "model.layers.0.input_layernorm": torch.rand(16, generator=g),
        "model.layers.0.mlp.experts": torch.randn(2, 24, 16, generator=g),
        "model.layers.0.self_attn.o_proj": torch.zeros(16, 16),
    })
    out = tmp_path / "legacy"
    res = run_cli("scan", d, "--out", out, "--quiet", env=cache_env)
    assert res.returncode == 0, res.stderr
    scores = Scores.load(out / "scores.json").by_name()
    assert math.isinf(scores["model.layers.0.input_layernorm"].score)
    assert {"model.layers.0.mlp.experts.0", "model.layers.0.mlp.experts.1"} <= set(scores)
    assert "model.layers.0.self_attn.o_proj: all-zero" in res.stderr
    res = run_cli("scan", d, "--out", tmp_path / "cur", "--variant", "current", "--quiet", env=cache_env)
    current = Scores.load(tmp_path / "cur" / "scores.json").by_name()
    assert current["model.layers.0.input_layernorm"].score == pytest.approx(1.0)
    assert math.isnan(current["model.layers.0.self_attn.o_proj"].score)
    res = run_cli("scan", d, "--scorer", "mp", "--out", tmp_path / "mp", env=cache_env)
    assert res.returncode == 2 and "model.layers.0.self_attn.o_proj is all zeros" in res.stderr
    assert not (tmp_path / "mp").exists()
    res = run_cli("scan", d, "--scorer", "mp", "--types", "input_layernorm", "--out", tmp_path / "mp1", env=cache_env)
    assert res.returncode == 2 and "no noise bulk" in res.stderr and not (tmp_path / "mp1").exists()


def test_usage_errors(run_cli, spectrum_reference, small_real_dir, tmp_path, cache_env):
    res = run_cli("scan", small_real_dir, "--types", "mlp.nothing", "--out", tmp_path / "t", env=cache_env)
    assert res.returncode == 2 and "matches --types mlp.nothing" in res.stderr and "mlp.up_proj" in res.stderr
    for bad in ("0", "101"):
        res = run_cli("scan", small_real_dir, "--top-percent", bad, "--out", tmp_path / "p", env=cache_env)
        assert res.returncode == 2 and "between 1 and 100" in res.stderr
    res = run_cli("scan", small_real_dir, "--scorer", "mp", "--variant", "legacy", "--out", tmp_path / "v", env=cache_env)
    assert res.returncode == 2 and "variant" in res.stderr
    deepseek = spectrum_reference / "model_snr_results" / "snr_results_deepseek-ai-DeepSeek-V3.1-Base.json"
    res = run_cli("select", deepseek, "--top-percent", "50", "--out", tmp_path / "d.yaml")
    assert res.returncode == 2 and "DeepSeek-V3.1-Base.json is empty" in res.stderr
    assert not (tmp_path / "d.yaml").exists() and not any(tmp_path.glob("[tpv]"))
