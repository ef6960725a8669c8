"""Language-model losses: :func:`lm_loss` picks the causal or the seq2seq one from the model.

Causal LMs: without materialising full-vocabulary logits. Only positions with a label are projected
through the output head, in chunks; each chunk's logits are recomputed in the backward pass
(activation checkpointing), so peak memory holds one chunk's float32 logits instead of
``batch × length × vocab``. Encoder-decoders (T5, BART): the generic route, full decoder logits
(their heads carry model-specific scaling, e.g. T5's tied-embedding rescale).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def _decoder_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The decoder stack and output head of a plain causal LM (None for models with logit tweaks)."""
    causal = _unwrapped(model)
    cfg = causal.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    decoder = getattr(causal, causal.base_model_prefix, None)
    head = causal.get_output_embeddings()
    if decoder is None or head is None:
        return None
    return decoder, head


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, labels, reduction="sum")


def _unwrapped(model: Any) -> Any:
    """The transformers model under a peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lm_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of label tokens): :func:`seq2seq_lm_loss` for an encoder-decoder,
    else :func:`causal_lm_loss`."""
    from ..automodel import is_seq2seq

    return (seq2seq_lm_loss if is_seq2seq(_unwrapped(model).config) else causal_lm_loss)(model, batch)


def seq2seq_lm_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of label tokens) of an encoder-decoder: the encoder reads
    ``input_ids`` (``attention_mask``), the decoder the labels shifted right by the model's own
    ``prepare_decoder_input_ids_from_labels``; every label (target + EOS) is predicted, none shifted here."""
    labels = batch["labels"]
    decoder_inputs = _unwrapped(model).prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_inputs).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss, int((labels != IGNORE).sum())


def causal_lm_loss(model: Any, batch: dict[str, torch.Tensor], *, chunk_tokens: int = 1024) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of label tokens) for one batch; labels are shifted inside."""
    labels = batch["labels"][:, 1:]
    parts = _decoder_and_head(model)
    if parts is None:  # generic route: full logits
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
        return loss, int((labels != IGNORE).sum())
    decoder, head = parts
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    hidden = hidden[:, :-1]
    keep = labels != IGNORE
    hidden, labels = hidden[keep], labels[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, labels.shape[0], chunk_tokens):
        h, y = hidden[start:start + chunk_tokens], labels[start:start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(_chunk_loss, head, h, y, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, h, y)
    return total, int(labels.shape[0])


@torch.no_grad()
def summed_eval_loss(model: Any, examples: list[dict[str, list[int]]], pad_id: int, *, batch_size: int,
                     max_batches: int | None = None, rank: int = 0, world: int = 1,
                     device: torch.device | str = "cpu") -> tuple[float, float]:
    """(sum of token losses, label tokens) over this process's share of the first ``max_batches``
    batches of ``examples`` (moved to ``device``), in eval mode (the model is put back in train mode)."""
    from ..data import collate

    model.eval()
    batches = [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)][:max_batches or None]
    total = count = 0.0
    for batch in batches[rank::world]:
        loss, n = lm_loss(model, {k: v.to(device) for k, v in collate(batch, pad_id).items()})
        total, count = total + float(loss), count + n
    model.train()
    return total, count
