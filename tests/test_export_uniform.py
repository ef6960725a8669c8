"""peft-adapter ``uniform: true``: serving/ holds one rank and one lora_alpha, and stock peft gives the same
logits as the exact adapter, for the fixture run and for real hybrid, alors (mixed ranks, rsLoRA) and sgm runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_fixtures import RANK8, config_data, make_run
from peft import PeftModel
from safetensors import safe_open
from train_fixtures import config_dict, make_tiny_model, write_text
from transformers import AutoModelForCausalLM

from spectra_core.config import load_config
from spectra_core.errors import InputError
from spectra_core.export.adapter import PeftAdapterExporter
from spectra_core.export.uniform import write_uniform_adapter
from spectra_core.pipeline import Pipeline
from spectra_core.run import Run

TOLERANCE = 1e-5  # max |Δlogit| / max |logit|


def stock_logits(base_dir: Path, adapter: Path, ids: torch.Tensor) -> torch.Tensor:
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def ranks_in(adapter: Path) -> set[int]:
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as fh:
        return {fh.get_slice(k).get_shape()[0] for k in fh.keys() if ".lora_A." in k}


def assert_serving_config(adapter: Path, rank: int) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (rank, rank, False)
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    assert ranks_in(adapter) == {rank}


def test_fixture_run_serving_copy_has_one_rank_and_equal_logits(tmp_path):
    fx = make_run(tmp_path / "fx")
    config = load_config(data=config_data(fx.base_dir, fx.run_dir), registry=fx.registry)
    run = Run(fx.run_dir, config, fx.plan, None, registry=fx.registry)
    out = PeftAdapterExporter(PeftAdapterExporter.Options(uniform=True)).export(run, tmp_path / "adapter")
    assert_serving_config(out / "serving", 8)
    ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    exact, padded = stock_logits(fx.base_dir, out, ids), stock_logits(fx.base_dir, out / "serving", ids)
    with torch.no_grad():
        live = fx.model(input_ids=ids).logits
    assert relative_difference(exact, live) <= TOLERANCE and relative_difference(padded, live) <= TOLERANCE
    card = (out / "README.md").read_text()
    assert "`serving/`" in card and "r=8" in card and "vllm serve" in card
    assert (out / "serving" / "README.md").read_text() == card

    write_uniform_adapter(out, tmp_path, rank=16)  # a larger rank a server may require
    assert_serving_config(tmp_path, 16)
    assert relative_difference(stock_logits(fx.base_dir, tmp_path, ids), exact) <= TOLERANCE
    with pytest.raises(InputError, match="below the adapter's largest rank 8"):
        write_uniform_adapter(out, tmp_path, rank=4)


# ----- the three methods, trained for real on a tiny random Llama -------------------------------------
def method_config(method: str, root: Path) -> dict:
    model = make_tiny_model(root / "model", layers=4)
    cfg = config_dict(model, write_text(root / "train.txt", n=120), root / "run", max_steps=3, eval_every=3,
                      save_every=3)
    cfg |= {"method": method, "exporters": [{"name": "peft-adapter", "options": {"uniform": True}}]}
    del cfg["quantizer"], cfg["allocator"]  # the method's own: bnb-nf4 and its allocator
    if method == "hybrid":
        cfg["allocator"] = {"name": "spectrum-top", "options": {"top_fraction": 0.5, "rank": 8, "alpha": 16}}
        cfg["rebalancer"] = {"name": "snr-reselect", "options": {"scorer": {"name": "random", "options": {"seed": 3}}}}
    elif method == "alors":
        cfg["allocator"] = {"name": "alors-tiers", "options": {"tiers": [
            {"name": "high", "quantile": [0, 0.25], "rank": 8, "alpha": 8},
            {"name": "medium", "quantile": [0.25, 0.5], "rank": 2, "alpha": 4, "lr_scale": 2.0},
            {"name": "low", "quantile": [0.5, 1], "rank": 0}]}}
        cfg["rebalancer"] = {"name": "alors-resize", "options": {"scorer": {"name": "random", "options": {"seed": 5}}}}
    else:
        cfg["allocator"] = {"name": "spectrum-top", "options": {"top_fraction": 1.0, "rank": 4, "alpha": 8}}
        cfg["gradient_merger"] = {"name": "cosine-groups", "options": {"threshold": -1.0, "max_group_size": 2,
                                                                       "calibration_batches": 2}}
    return cfg


@pytest.mark.parametrize("method", ["hybrid", "alors", "sgm"])
def test_trained_method_serving_copy_gives_the_exact_adapters_logits(method, tmp_path):
    cfg = method_config(method, tmp_path)
    pipe = Pipeline.from_dict(cfg)
    run = pipe.train()
    out = pipe.export(run)["peft-adapter"]
    exact_config = json.loads((out / "adapter_config.json").read_text())
    if method == "alors":  # the case servers get wrong: several ranks, rsLoRA scales
        assert exact_config["use_rslora"] is True and len(ranks_in(out)) > 1
    if method == "sgm":
        assert run.plan.groups()
    top = max(m.rank for m in run.plan.injected())
    assert_serving_config(out / "serving", top)
    ids = torch.randint(0, run.model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    base_dir = Path(cfg["model"]["source"])
    exact, padded = stock_logits(base_dir, out, ids), stock_logits(base_dir, out / "serving", ids)
    assert relative_difference(exact, stock_logits_without_adapter(base_dir, ids)) > 1e-3  # the adapter acts
    assert relative_difference(padded, exact) <= TOLERANCE


def stock_logits_without_adapter(base_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return base(input_ids=ids).logits


def test_rank_mismatch_between_config_and_weights_is_refused(tmp_path):
    fx = make_run(tmp_path / "fx")
    src = fx.run_dir / "final"
    config = json.loads((src / "adapter_config.json").read_text())
    config["rank_pattern"] = {}
    (src / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match=f"{RANK8}: adapter_config.json says rank 4"):
        write_uniform_adapter(src, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
