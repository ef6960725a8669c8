"""Module types as the Spectrum reference defines them, with the stack of an encoder-decoder kept in front."""

from __future__ import annotations

from collections.abc import Iterable

STACKS = ("encoder", "decoder")


def module_type(name: str) -> str:
    """The dotted suffix after the first all-digit component (Spectrum's type), behind the ``encoder`` /
    ``decoder`` stack the layer sits in, if any, so an encoder-decoder's two stacks are never one type;
    a name without a layer index is its own type. A trailing all-digit component (expert ``i`` of a fused
    MoE tensor, ``{tensor}.{i}``) is not part of it, so the experts of one fused tensor share their type.

    ``model.layers.7.self_attn.q_proj`` → ``self_attn.q_proj``;
    ``model.layers.3.mlp.experts.12.down_proj`` → ``mlp.experts.12.down_proj`` (Spectrum's per-expert names);
    ``model.layers.3.mlp.experts.gate_up_proj.5`` → ``mlp.experts.gate_up_proj``; ``lm_head`` → ``lm_head``;
    T5's ``decoder.block.1.layer.1.EncDecAttention.q`` → ``decoder.layer.1.EncDecAttention.q``.
    """
    parts = name.split(".")
    if len(parts) > 2 and parts[-1].isdigit() and not parts[-2].isdigit():
        parts = parts[:-1]
    for i, part in enumerate(parts):
        if part.isdigit():
            stack = [p for p in parts[:i] if p in STACKS]
            return ".".join(stack[-1:] + parts[i + 1:])
    return name


def layer_index(name: str) -> int | None:
    """The first all-digit component of a module name (its layer), or None."""
    return next((int(p) for p in name.split(".") if p.isdigit()), None)


def layer_count(names: Iterable[str]) -> int:
    """Number of layers: one more than the highest layer index among ``names`` (0 when none has one)."""
    return 1 + max((i for n in names if (i := layer_index(n)) is not None), default=-1)
