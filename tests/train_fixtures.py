"""Shared builders for the quantizer/data/training tests: a tiny random Llama with a small trained
BPE tokenizer (vocab 512, chat template, optionally without pad token), data files, plans, configs.

Import the fixtures into a test module with ``from train_fixtures import tiny_model_dir, ...``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from spectra_core.config import TargetsConfig
from spectra_core.plan import AdapterPlan, ModulePlan

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a cat dog sees runs over under river stone light dark king land water fire small great "
         "and then he she it they went came spoke said unto all day night").split()
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def sentences(n: int, seed: int = 0, length: tuple[int, int] = (5, 14)) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*length))).capitalize() + "."
            for _ in range(n)]


def make_tokenizer(pad: bool = True):
    """A byte-level BPE tokenizer trained on the fixture vocabulary (deterministic, offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences(400) + [" ".join(WORDS)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<pad>" if pad else None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(path: Path, *, pad: bool = True, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A random LlamaForCausalLM (safetensors) + tokenizer saved to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer(pad=pad)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model_nopad_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tinynopad") / "model", pad=False)


def write_text(path: Path, n: int = 120, seed: int = 0) -> Path:
    path.write_text("\n".join(sentences(n, seed)) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def instruction_rows(n: int = 40) -> list[dict[str, str]]:
    s = sentences(2 * n, seed=1)
    return [{"prompt": f"Q: {s[2 * i]}\nA:", "response": " " + s[2 * i + 1]} for i in range(n)]


def chat_rows(n: int = 30) -> list[dict[str, Any]]:
    s = sentences(3 * n, seed=2)
    return [{"messages": [{"role": "system", "content": s[3 * i]}, {"role": "user", "content": s[3 * i + 1]},
                          {"role": "assistant", "content": s[3 * i + 2]}]} for i in range(n)]


def make_plan(model_dir: Path, *, rank: int = 4, mode: str = "targeted", active: str = "all",
              lr_scale: float = 1.0) -> AdapterPlan:
    """A plan over every linear target; ``active``: 'all', 'attn' (attention only) or 'top' (last layer only)."""
    from spectra_core.models import find_targets
    from spectra_core.spectral.types import layer_index

    targets = find_targets(model_dir, TargetsConfig())
    top = max(layer_index(t.name) or 0 for t in targets)

    def is_active(name: str) -> bool:
        return {"all": True, "attn": "self_attn" in name, "top": layer_index(name) == top}[active]

    modules = {t.name: ModulePlan(name=t.name, type=t.type, shape=(t.out_features, t.in_features),
                                  active=is_active(t.name), rank=rank, alpha=2.0 * rank,
                                  lr_scale=lr_scale if "mlp" in t.name else 1.0)
               for t in targets}
    return AdapterPlan(allocator="fixture", mode=mode, modules=modules)


def config_dict(model_dir: Path, data: Path, out: Path, **training: Any) -> dict[str, Any]:
    """A run config for the tiny model: no quantization, 'random' scorer, hybrid's 'spectrum-top' allocator."""
    train = {"max_steps": 6, "batch_size": 2, "warmup_steps": 1, "eval_every": 3, "save_every": 2,
             "log_every": 1, "learning_rate": 1e-3, **training}
    return {"model": {"source": str(model_dir)}, "quantizer": {"name": "none"}, "scorer": {"name": "random"},
            "allocator": {"name": "spectrum-top", "options": {"rank": 4, "alpha": 8, "top_fraction": 0.5}},
            "data": {"path": str(data), "max_length": 32, "validation_fraction": 0.1},
            "training": train, "output_dir": str(out)}


def assert_resumes_bitwise(config: Any, tmp_path: Path, last_step: int, plan: AdapterPlan | None = None) -> None:
    """Train ``config(out_dir)`` (a run config dict) to the end twice; the second run loses its final adapter
    and newest checkpoint (``last_step``) and resumes: both final adapters are bitwise equal."""
    import shutil

    from safetensors.torch import load_file

    from spectra_core.pipeline import Pipeline

    for run in ("a", "b"):
        Pipeline.from_dict(config(tmp_path / run)).train(plan.model_copy(deep=True) if plan is not None else None)
    shutil.rmtree(tmp_path / "b" / "final")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / f"step-{last_step:08d}")
    Pipeline.from_dict(config(tmp_path / "b")).train(resume=True)
    a = load_file(tmp_path / "a" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: one thread each, the repo importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def spectra_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "spectra_core", *args]
