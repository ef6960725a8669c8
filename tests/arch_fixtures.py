"""Tiny random-weight models of every architecture family the test matrix covers, built from configs
(no hub): 2 layers, hidden 64, the fixture tokenizer (vocab ~512). Their spectra are noise: they test
plumbing (targets, scan names, training, export), not SNR selection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from train_fixtures import make_tokenizer

HIDDEN, LAYERS, HEADS = 64, 2, 4
ATTN = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "max_position_embeddings": 256}
MOE = {**ATTN, "num_key_value_heads": 2, "num_experts_per_tok": 2}

# model_type -> config fields (the vocabulary and special tokens are added from the tokenizer)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {**ATTN, "intermediate_size": 128, "num_key_value_heads": 2, "tie_word_embeddings": False},
    "llama-tied": {**ATTN, "intermediate_size": 128, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "qwen2": {**ATTN, "intermediate_size": 128, "num_key_value_heads": 2},
    "mistral": {**ATTN, "intermediate_size": 128, "num_key_value_heads": 2},
    "phi3": {**ATTN, "intermediate_size": 128, "num_key_value_heads": 2},
    "gemma2": {**ATTN, "intermediate_size": 128, "num_key_value_heads": 2, "head_dim": 16},
    "gpt_neox": {**ATTN, "intermediate_size": 128},
    "opt": {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "ffn_dim": 128,
            "word_embed_proj_dim": HIDDEN, "max_position_embeddings": 256},
    "gpt2": {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_positions": 256},
    "falcon": {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS},
    "mixtral": {**MOE, "intermediate_size": 64, "num_local_experts": 4},
    "qwen2_moe": {**MOE, "intermediate_size": 128, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 64, "num_experts": 4},
    "qwen3_moe": {**MOE, "intermediate_size": 128, "moe_intermediate_size": 32, "num_experts": 4, "head_dim": 16},
    "t5": {"d_model": HIDDEN, "d_ff": 128, "num_layers": LAYERS, "num_heads": HEADS, "d_kv": 16},
    "bart": {"d_model": HIDDEN, "encoder_layers": LAYERS, "decoder_layers": LAYERS, "encoder_attention_heads": HEADS,
             "decoder_attention_heads": HEADS, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
             "max_position_embeddings": 256},
}
MOE_ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe")
SEQ2SEQ_ARCHITECTURES = ("t5", "bart")  # trained on data.format: seq2seq


def stock_class(config: Any) -> Any:
    """The stock transformers auto class a user would build or load ``config``'s model with."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM


def load_stock(model_dir: Path) -> Any:
    """``model_dir`` in float32 through stock transformers (its auto class), in eval mode."""
    from transformers import AutoConfig

    return stock_class(AutoConfig.from_pretrained(model_dir)).from_pretrained(model_dir, dtype=torch.float32).eval()


def make_model(arch: str, path: Path, seed: int = 0) -> Path:
    """Save a random model of ``arch`` (a key of ARCHITECTURES) and the fixture tokenizer to ``path``."""
    from transformers import AutoConfig

    tokenizer = make_tokenizer()
    fields = {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
              "bos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
              **ARCHITECTURES[arch]}
    config = AutoConfig.for_model(arch.removesuffix("-tied"), **fields)
    if config.is_encoder_decoder:  # the decoder starts from the pad token, as in T5's and BART's own configs
        config.decoder_start_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = stock_class(config).from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


# What the matrix runs besides the float end-to-end test of every supported architecture (tests names).
BNB_END_TO_END = ("gpt2", "falcon", "mixtral", "qwen2_moe", "qwen3_moe", "t5", "bart")  # also trained on a bnb-nf4 base
METHODS = ("hybrid", "alors", "sgm")
METHOD_ARCHITECTURES = ("llama", "gpt2", "mixtral", "t5")  # each method end to end (its own bnb-nf4 base)
TABLE_START, TABLE_END = "<!-- architectures-table:start -->", "<!-- architectures-table:end -->"


def architectures_table(model_dir_of) -> str:
    """The supported-architectures table of docs/architectures.md, from the matrix's models (meta surveys)."""
    from spectra_core.config import TargetsConfig
    from spectra_core.errors import InputError
    from spectra_core.models import survey_model

    lines = ["| architecture | status | adapted layer kinds | skipped by default (besides embeddings, norms, "
             "biases, lm_head) | adaptable share | methods run |", "|---|---|---|---|---|---|"]
    for arch in ARCHITECTURES:
        try:
            survey = survey_model(model_dir_of(arch), TargetsConfig())
        except InputError as exc:
            lines.append(f"| {arch} | refused, exit 2 | — | {exc.message} | 0 % | — |")
            continue
        adapted = sorted({f.layer for f in survey.families if f.adapted})
        skipped = sorted({f"{f.type} ({f.reason.split(':')[0]})" for f in survey.families
                          if not f.adapted and f.reason.split(":")[0] in ("router", "1×H gate", "relative position bias")})
        methods = ", ".join(METHODS) if arch in METHOD_ARCHITECTURES else "—"
        quant = "float + bnb-nf4" if arch in BNB_END_TO_END else "float"
        lines.append(f"| {arch} | trains, exports ({quant}) | {', '.join(adapted)} | {', '.join(skipped) or '—'} | "
                     f"{survey.adaptable_fraction():.0%} | {methods} |")
    return "\n".join(lines)


if __name__ == "__main__":  # print the table for docs/architectures.md
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        print(architectures_table(lambda arch: make_model(arch, Path(root) / arch)))
