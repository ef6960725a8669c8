"""Weight sources: safetensors (single/sharded), GGUF, in-memory, peft and bitsandbytes 4-bit models."""

from __future__ import annotations

import os

import pytest
import torch

from spectra_core.errors import InputError
from spectra_core.spectral.sources import open_weights
from tests.scan_fixtures import write_checkpoint

pytest_plugins = ["scan_fixtures"]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_sharded_checkpoint_matches_the_tensors(small_real_dir, smollm2_tensors):
    source = open_weights(small_real_dir)
    assert len(source) == len(smollm2_tensors)
    names = source.names()
    assert names.index("model.layers.2.mlp.up_proj") < names.index("model.norm")
    for name, w in source:
        expected = smollm2_tensors[name].to(torch.bfloat16)
        assert w.dtype == torch.bfloat16 and w.dim() == 2
        assert torch.equal(w.reshape(expected.shape), expected), name
    assert open_weights(small_real_dir).fingerprint == source.fingerprint


def test_names_restrict_and_missing_names_fail(small_real_dir):
    wanted = ["model.layers.1.self_attn.q_proj", "model.layers.0.mlp.down_proj"]
    source = open_weights(small_real_dir, names=wanted)
    assert sorted(source.names()) == sorted(wanted)
    assert source.fingerprint != open_weights(small_real_dir).fingerprint
    with pytest.raises(InputError, match="model.layers.9.mlp.up_proj"):
        open_weights(small_real_dir, names=["model.layers.9.mlp.up_proj"])


def test_ranks_and_fingerprint_changes(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = write_checkpoint(tmp_path / "m", {"model.layers.0.norm": torch.rand(8, generator=g),
                                             "model.layers.0.mlp.experts": torch.randn(3, 6, 4, generator=g),
                                             "model.layers.0.proj": torch.randn(5, 4, generator=g)})
    source = open_weights(path)
    got = {n: w for n, w in source}
    assert got["model.layers.0.norm"].shape == (1, 8)
    assert [n for n in got if "experts" in n] == [f"model.layers.0.mlp.experts.{i}" for i in range(3)]
    before = source.fingerprint
    os.utime(path / "model.safetensors", ns=(1, 1))
    assert open_weights(path).fingerprint != before


def test_gguf_names_and_shapes(smollm2_gguf):
    source = open_weights("bundled:smollm2-135m")
    assert str(smollm2_gguf) in source.label
    names = source.names()
    assert "model.layers.29.self_attn.k_proj" in names and "model.embed_tokens" in names
    shapes = {e.name: e.shape for e in source.entries}
    assert shapes["model.layers.0.self_attn.k_proj"] == (192, 576)
    assert shapes["model.layers.0.mlp.down_proj"] == (576, 1536)


@pytest.mark.slow
def test_gguf_tensors_equal_transformers_gguf_load(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32)
    state = model.state_dict()
    for name, w in open_weights(smollm2_gguf):
        expected = state[f"{name}.weight"]
        assert torch.equal(w.reshape(expected.shape), expected), name


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config)


def test_peft_model_base_and_effective_weights():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    base = dict(open_weights(model))
    assert "model.layers.0.self_attn.q_proj" in base
    assert not any("lora" in n or "base_layer" in n or n.startswith("base_model") for n in base)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.equal(base["model.layers.0.self_attn.q_proj"], q.base_layer.weight)
    effective = dict(open_weights(model, names=["model.layers.0.self_attn.q_proj"], effective=True))
    expected = q.base_layer.weight + q.get_delta_weight("default")
    assert torch.allclose(effective["model.layers.0.self_attn.q_proj"], expected)
    assert not torch.allclose(effective["model.layers.0.self_attn.q_proj"], q.base_layer.weight)


def test_bnb_4bit_model_is_dequantized_and_guarded():
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bf

    dense = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Linear(96, 64))
    quant = torch.nn.Sequential(*[bnb.nn.Linear4bit(m.in_features, m.out_features, quant_type="nf4") for m in dense])
    for q, d in zip(quant, dense):
        q.weight = bnb.nn.Params4bit(d.weight.data.clone(), requires_grad=False, quant_type="nf4")
    quant = quant.to("cpu")  # quantizes the weights
    assert all(m.weight.quant_state is not None for m in quant)
    got = dict(open_weights(quant))
    assert all(not m.support_avx512bf16_for_cpu for m in quant)
    for i, (q, d) in enumerate(zip(quant, dense)):
        w = got[str(i)]
        assert w.shape == d.weight.shape
        assert torch.allclose(w, bf.dequantize_4bit(q.weight.data, q.weight.quant_state).float())
        assert (w - d.weight).abs().max() < 0.2 * d.weight.abs().max()  # nf4 round trip, not garbage
