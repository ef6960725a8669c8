"""Which transformers class builds and loads a model: the one decision, read from its config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    import torch


def is_seq2seq(config: Any) -> bool:
    """True for an encoder-decoder model (T5, BART, ...): the config says so or its type has a seq2seq-LM class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    return bool(getattr(config, "is_encoder_decoder", False)) or \
        getattr(config, "model_type", None) in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES


def model_class(config: Any) -> Any:
    """The transformers auto class that builds and loads ``config``'s model: ``AutoModelForSeq2SeqLM`` for an
    encoder-decoder, ``AutoModelForCausalLM`` for a causal LM; anything else is refused (exit 2)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kind = getattr(config, "model_type", None)
    if is_seq2seq(config):
        return AutoModelForSeq2SeqLM
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM"):
        return AutoModelForCausalLM
    raise InputError(f"model type {kind!r} has no causal-LM or seq2seq-LM class in transformers "
                     "(AutoModelForCausalLM, AutoModelForSeq2SeqLM)",
                     hint="spectra trains causal and encoder-decoder LMs; see docs/architectures.md for the "
                          "supported architectures")


def load_pretrained(model_dir: Any, *, trust_remote_code: bool = False, **kwargs: Any) -> torch.nn.Module:
    """``from_pretrained`` of the model in ``model_dir`` with its class (:func:`model_class`), from safetensors."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    return model_class(config).from_pretrained(model_dir, trust_remote_code=trust_remote_code,
                                               use_safetensors=True, **kwargs)
