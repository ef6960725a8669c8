"""Module types as the Spectrum reference defines them."""

from __future__ import annotations

from collections.abc import Iterable


def module_type(name: str) -> str:
    """The dotted suffix after the first all-digit component; a name without one is its own type. A
    trailing all-digit component (expert ``i`` of a fused MoE tensor, ``{tensor}.{i}``) is not part of it,
    so the experts of one fused tensor share their type across layers.

    ``model.layers.7.self_attn.q_proj`` → ``self_attn.q_proj``;
    ``model.layers.3.mlp.experts.12.down_proj`` → ``mlp.experts.12.down_proj`` (Spectrum's per-expert names);
    ``model.layers.3.mlp.experts.gate_up_proj.5`` → ``mlp.experts.gate_up_proj``; ``lm_head`` → ``lm_head``.
    """
    parts = name.split(".")
    if len(parts) > 2 and parts[-1].isdigit() and not parts[-2].isdigit():
        parts = parts[:-1]
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[i + 1:])
    return name


def layer_index(name: str) -> int | None:
    """The first all-digit component of a module name (its layer), or None."""
    return next((int(p) for p in name.split(".") if p.isdigit()), None)


def layer_count(names: Iterable[str]) -> int:
    """Number of layers: one more than the highest layer index among ``names`` (0 when none has one)."""
    return 1 + max((i for n in names if (i := layer_index(n)) is not None), default=-1)
