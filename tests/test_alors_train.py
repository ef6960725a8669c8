"""`method: alors` end to end on a tiny random Llama with a real trainer: per-tier LR groups in the
optimizer, the rebalancer resizing LoRA during and after training, stock-peft export with equal logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from spectra_core.builtins.quantizers import BnbNF4Quantizer
from spectra_core.pipeline import Pipeline
from spectra_core.training import checkpoint as ckpt
from spectra_core.errors import ConfigError
from spectra_core.adapters import effective_weight, lora_layers
from train_fixtures import make_tiny_model, write_text

TIERS = [{"name": "high", "quantile": [0, 0.25], "rank": 8, "alpha": 8, "lr_scale": 1.0},
         {"name": "medium", "quantile": [0.25, 0.5], "rank": 4, "alpha": 4, "lr_scale": 2.5},
         {"name": "low", "quantile": [0.5, 1], "rank": 0}]


def alors_config(model_dir: Path, data: Path, out: Path, **rebalancer) -> dict:
    """method: alors with the tiny model's tiers; a re-scoring with another random seed forces moves."""
    return {
        "method": "alors", "model": {"source": str(model_dir)},
        "allocator": {"name": "alors-tiers", "options": {"tiers": TIERS}},
        "rebalancer": {"name": "alors-resize",
                       "options": {"scorer": {"name": "random", "options": {"seed": 5}}, **rebalancer}},
        "data": {"path": str(data), "max_length": 32, "validation_fraction": 0.1},
        "training": {"max_steps": 6, "batch_size": 2, "warmup_steps": 1, "eval_every": 3, "save_every": 3,
                     "log_every": 1, "learning_rate": 1e-3},
        "output_dir": str(out),
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("alors") / "model", layers=4)


@pytest.fixture(scope="module")
def trained(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alors-run")
    data = write_text(tmp / "train.txt", n=200)
    pipe = Pipeline.from_dict(alors_config(model_dir, data, tmp / "run", every_steps=2))
    assert pipe.config.training.gradient_checkpointing is True
    run = pipe.train()
    return pipe, run, pipe.export(run)


def logits(model, vocab: int) -> torch.Tensor:
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_optimizer_groups_follow_the_tiers(trained):
    pipe, run, _ = trained
    for path in ckpt.list_checkpoints(run.run_dir / "checkpoints"):
        meta = json.loads((path / "state.json").read_text())
        plan = ckpt.read_plan(path)
        grouped = {name: g["lr_scale"] for g in meta["param_groups"] for name in g["names"]}
        with safe_open(str(path / "adapter.safetensors"), framework="pt") as fh:
            shapes = {k: fh.get_slice(k).get_shape() for k in fh.keys()}
        assert {g["lr_scale"] for g in meta["param_groups"]} == {1.0, 2.5}
        for m in plan.modules.values():
            names = [n for n in shapes if f".{m.name}.lora_" in n]
            assert len(names) == 2 * bool(m.rank)
            for n in names:
                assert (n in grouped) == m.active, n
                if m.active:
                    expected = {t["name"]: t.get("lr_scale") for t in TIERS}[m.tier]
                    assert grouped[n] == m.lr_scale == expected
                    assert pipe.config.training.learning_rate * expected == pytest.approx(
                        next(g["initial_lr"] for g in meta["param_groups"] if n in g["names"]))
                r = shapes[n][0] if "lora_A" in n else shapes[n][1]
                assert r == m.rank


def test_rebalancer_fired_during_and_after_training(trained):
    _, run, _ = trained
    events = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "rebalance"] == [2, 4, 6]
    history = run.plan.history
    assert {c.strategy for c in history} == {"alors-resize"}
    tiers = [c for c in history if c.field == "tier"]
    assert tiers, "the re-scoring moved no module"
    ranks = [c for c in history if c.field == "rank"]
    assert any(c.after > c.before for c in ranks) and any(c.after < c.before for c in ranks)
    assert any("truncated SVD" in c.reason and "energy kept" in c.reason for c in ranks)
    assert any("zero-padding" in c.reason for c in ranks)
    live = {n: layer.r["default"] for n, layer in lora_layers(run.model).items()}
    assert live == {m.name: m.rank for m in run.plan.injected()}
    saved = json.loads((run.run_dir / "plan.json").read_text())
    assert len(saved["history"]) == len(history)
    # every tier keeps its count per type
    for t in {m.type for m in run.plan.modules.values()}:
        assert sorted(m.tier for m in run.plan.modules.values() if m.type == t) == ["high", "low", "low", "medium"]


def test_adapter_export_loads_in_stock_peft_with_equal_logits(trained, model_dir):
    from peft import PeftModel

    _, run, paths = trained
    config = json.loads((paths["peft-adapter"] / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and len(set(config["rank_pattern"].values()) | {config["r"]}) > 1
    vocab = run.model.config.vocab_size
    expected = logits(run.model, vocab)
    base = BnbNF4Quantizer().load(model_dir)
    loaded = PeftModel.from_pretrained(base, paths["peft-adapter"])
    torch.testing.assert_close(logits(loaded, vocab), expected, rtol=0, atol=1e-5)


def test_report_and_merged_exports(trained):
    _, _, paths = trained
    report = json.loads((paths["report"] / "report.json").read_text())
    assert any(c["field"] == "rank" and c["strategy"] == "alors-resize" for c in report["history"])
    assert {"tier", "rank"} <= set(report["plan"]["modules"][0])
    assert "ranks" in report["figures"]
    assert (paths["merged"] / "config.json").is_file()


def test_demoted_modules_merge_into_a_float_base_and_export_stays_exact(model_dir, tmp_path):
    from peft import PeftModel

    from spectra_core.builtins.quantizers import NoQuantizer

    data = write_text(tmp_path / "train.txt", n=120)
    cfg = alors_config(model_dir, data, tmp_path / "run", on_demote="merge")
    cfg["quantizer"] = {"name": "none"}
    cfg["training"] |= {"max_steps": 2, "save_every": 10, "eval_every": 10}
    cfg["exporters"] = [{"name": "peft-adapter"}]
    pipe = Pipeline.from_dict(cfg)
    run = pipe.train()
    merged = [c for c in run.plan.history if "merged into the float base" in c.reason]
    assert merged
    layers = lora_layers(run.model)
    assert all(layers[c.module].merged for c in merged)
    for c in merged:  # re-scoring reads base + update once, not the merged base + the update again
        layer = layers[c.module]
        torch.testing.assert_close(effective_weight(layer), layer.get_base_layer().weight.float())
    expected = logits(run.model, run.model.config.vocab_size)
    adapter = pipe.export(run)["peft-adapter"]
    loaded = PeftModel.from_pretrained(NoQuantizer().load(model_dir), adapter)
    torch.testing.assert_close(logits(loaded, run.model.config.vocab_size), expected, rtol=0, atol=1e-5)


def test_merge_on_a_4bit_base_keeps_a_frozen_lora(model_dir, tmp_path):
    data = write_text(tmp_path / "train.txt", n=120)
    cfg = alors_config(model_dir, data, tmp_path / "run", on_demote="merge")
    cfg["training"] |= {"max_steps": 1, "save_every": 10, "eval_every": 10}
    cfg["exporters"] = []
    run = Pipeline.from_dict(cfg).train()
    demoted = [c for c in run.plan.history if c.field == "active" and c.after is False]
    assert demoted and all("4-bit base would requantize" in c.reason for c in demoted)
    assert not any(layer.merged for layer in lora_layers(run.model).values())


def test_alors_resize_refuses_a_plan_without_tiers_before_training(model_dir, tmp_path):
    cfg = alors_config(model_dir, write_text(tmp_path / "train.txt", n=50), tmp_path / "run")
    cfg["allocator"] = {"name": "spectrum-top"}
    with pytest.raises(ConfigError, match="has no tiers"):
        Pipeline.from_dict(cfg).train()
    assert not (tmp_path / "run").exists()
