"""Reference compatibility: result files, per-type top-percent selection, the unfrozen-parameters YAML."""

from __future__ import annotations

import json
import math

import pytest

from spectra_core.errors import InputError
from spectra_core.scores import ModuleScore, Scores
from spectra_core.spectral.formats import load_scores, to_flat, to_nested, unfrozen_yaml
from spectra_core.spectral.selection import lora_target_regex, lora_targets, reference_order, top_percent

YAML_MODELS = ["akjindal53244-Llama-3.1-Storm-8B", "meta-llama-Meta-Llama-3.1-8B-Instruct"]


@pytest.mark.parametrize("slug", YAML_MODELS)
def test_reference_yaml_reproduced_byte_for_byte(spectrum_reference, slug):
    scores = load_scores(spectrum_reference / "model_snr_results" / f"snr_results_{slug}.json")
    expected = (spectrum_reference / f"snr_results_{slug}_unfrozenparameters_50percent.yaml").read_bytes()
    assert unfrozen_yaml(top_percent(scores, 50)).encode() == expected


def test_every_reference_file_loads_or_fails_clearly(spectrum_reference):
    files = sorted((spectrum_reference / "model_snr_results").glob("*.json"))
    assert len(files) > 10
    for path in files:
        if "DeepSeek-V3.1" in path.name:
            with pytest.raises(InputError, match="empty"):
                load_scores(path)
            continue
        scores = load_scores(path)
        raw = json.loads(path.read_text())
        n = sum(len(v) for v in raw.values()) if scores.options["source_format"] == "nested" else len(raw)
        assert len(scores.modules) == n


def test_flat_and_nested_round_trip(spectrum_reference, tmp_path):
    scores = load_scores(spectrum_reference / "model_snr_results" / "snr_results_HuggingFaceTB-SmolLM-135M.json")
    assert any(math.isinf(m.score) for m in scores.modules)
    flat, nested = tmp_path / "flat.json", tmp_path / "nested.json"
    flat.write_text(to_flat(scores))
    nested.write_text(to_nested(scores))
    assert "Infinity" in flat.read_text()
    back = load_scores(flat)
    assert [(m.name, m.type, m.score) for m in back.modules] == [(m.name, m.type, m.score) for m in scores.modules]
    grouped = load_scores(nested)
    for type_ in scores.types():
        values = [m.score for m in grouped.modules if m.type == type_]
        assert values == sorted(values, reverse=True)
    assert unfrozen_yaml(top_percent(grouped, 30)) == unfrozen_yaml(top_percent(scores, 30))


def test_unparseable_and_foreign_files(tmp_path):
    for text, match in [("\r\n", "empty"), ("{not json", "not valid JSON"), ('{"a": [1, 2]}', "not a scores file")]:
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(InputError, match=match):
            load_scores(path)


def _scores(values: dict[str, float]) -> Scores:
    return Scores(scorer="t", modules=[ModuleScore(name=n, type=n.split(".", 3)[-1], score=s, shape=(4, 4))
                                       for n, s in values.items()])


def test_top_percent_floor_ties_and_type_order():
    names = {f"model.layers.{i}.mlp.up_proj": float(i % 3) for i in range(7)}
    names |= {f"model.layers.{i}.self_attn.q_proj": 1.0 for i in range(5)}
    sel = top_percent(_scores(names), 50)
    assert list(sel) == ["mlp.up_proj", "self_attn.q_proj"]
    up = [m.name for m in sel["mlp.up_proj"]]
    assert up == ["model.layers.2.mlp.up_proj", "model.layers.5.mlp.up_proj", "model.layers.1.mlp.up_proj"]
    assert [m.name for m in sel["self_attn.q_proj"]] == [f"model.layers.{i}.self_attn.q_proj" for i in (0, 1)]
    assert [len(v) for v in top_percent(_scores(names), 100).values()] == [7, 5]
    assert [len(v) for v in top_percent(_scores(names), 1).values()] == [0, 0]
    for bad in (0, 100.5, -3, float("nan")):
        with pytest.raises(InputError, match="between 1 and 100"):
            top_percent(_scores(names), bad)


def test_reference_order_and_lora_targets():
    scores = Scores(scorer="t", modules=[
        ModuleScore(name="model.layers.0.self_attn.q_proj", type="self_attn.q_proj", score=2.0, shape=(8, 8)),
        ModuleScore(name="model.layers.0.input_layernorm", type="input_layernorm", score=math.inf, shape=(1, 8)),
        ModuleScore(name="model.embed_tokens", type="model.embed_tokens", score=math.inf, shape=(50, 8)),
        ModuleScore(name="model.layers.1.self_attn.q_proj", type="self_attn.q_proj", score=3.0, shape=(8, 8)),
    ])
    ordered = reference_order(scores)
    assert [m.type for m in ordered.modules] == ["input_layernorm", "model.embed_tokens", "self_attn.q_proj",
                                                 "self_attn.q_proj"]
    sel = top_percent(ordered, 100)
    targets = lora_targets(sel)
    assert targets == ["model.layers.1.self_attn.q_proj", "model.layers.0.self_attn.q_proj"]
    import re

    regex = lora_target_regex(targets)
    assert re.fullmatch(regex, "base_model.model.model.layers.1.self_attn.q_proj")
    assert not re.fullmatch(regex, "model.layers.11.self_attn.q_proj")
    assert lora_targets(sel, linear_names=["model.embed_tokens"]) == ["model.embed_tokens"]
