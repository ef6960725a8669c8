"""Budget mode: solve the tier ranks so that the trainable LoRA parameters land on a target count.

Ranks keep the configured tiers' proportions (rank 16 / 4 → 4 : 1), scaled to the budget and rounded;
then single modules move ±1 rank (never past a neighbouring tier's rank) until the total is as close
to the budget as a module's size allows. The result must be within ``tolerance`` of the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from spectra_core.errors import InputError
from spectra_core.strategies import TargetModule

from .tiers import Tier

TOLERANCE = 0.01


def lora_size(t: TargetModule) -> int:
    """Parameters per unit of rank: A is r×in, B is out×r."""
    return t.in_features + t.out_features


def uniform_budget(targets: Sequence[TargetModule], rank: int) -> int:
    """Trainable parameters of a rank-``rank`` LoRA on every target."""
    return rank * sum(lora_size(t) for t in targets)


def solve_ranks(members: dict[str, list[TargetModule]], tiers: Sequence[Tier], budget: int, cap: int,
                tolerance: float = TOLERANCE) -> dict[str, int]:
    """Module name → rank for the trainable tiers (``members``: tier name → its modules).

    ``cap`` is the largest rank any module may take. Raises InputError for a budget below one
    rank-1 adapter per module (or too small for strictly decreasing ranks), above full rank, or
    out of reach of ``tolerance``.
    """
    active = [t for t in tiers if t.rank > 0 and members.get(t.name)]
    if not active:
        raise InputError("budget mode: no module falls into a tier with rank > 0",
                         hint="widen the trainable tiers' bands")
    sizes = [sum(lora_size(m) for m in members[t.name]) for t in active]
    modules = [m for t in active for m in members[t.name]]
    floor_ranks = list(range(len(active), 0, -1))
    minimum = sum(r * s for r, s in zip(floor_ranks, sizes))
    full = sum(min(m.in_features, m.out_features) * lora_size(m) for m in modules)
    if budget < sum(sizes):
        raise InputError(f"budget of {budget:,} trainable parameters is below one rank-1 LoRA on each of the "
                         f"{len(modules)} tiered modules ({sum(sizes):,} parameters)",
                         hint=f"raise the budget to at least {minimum:,} or move modules to the frozen tier")
    if budget < minimum:
        raise InputError(f"budget of {budget:,} is too small for strictly decreasing tier ranks "
                         f"{floor_ranks} (needs {minimum:,})", hint="raise the budget or use fewer trainable tiers")
    if budget > full:
        raise InputError(f"budget of {budget:,} exceeds full rank on every tiered module ({full:,} parameters)",
                         hint="lower the budget; beyond full rank a LoRA adds parameters but no capacity")
    scale = budget / sum(t.rank * s for t, s in zip(active, sizes))
    nominal = [max(1, round(t.rank * scale)) for t in active]
    for i in range(len(nominal) - 2, -1, -1):
        nominal[i] = max(nominal[i], nominal[i + 1] + 1)
    if nominal[0] > cap:
        raise InputError(f"budget of {budget:,} needs rank {nominal[0]} in tier {active[0].name!r}, above the "
                         f"largest rank every target allows ({cap})",
                         hint="lower the budget or give the top tier more modules")
    ranks = {m.name: r for t, r in zip(active, nominal) for m in members[t.name]}
    residual = budget - sum(ranks[m.name] * lora_size(m) for m in modules)
    bounds = [(nominal[i + 1] + 1 if i + 1 < len(nominal) else 1, nominal[i - 1] - 1 if i else cap)
              for i in range(len(active))]
    changed = True
    while changed and residual:
        changed = False
        for (low, high), t in zip(bounds, active):
            for m in sorted(members[t.name], key=lora_size, reverse=True):
                step = 1 if residual > 0 else -1
                if 2 * abs(residual) > lora_size(m) and low <= ranks[m.name] + step <= high:
                    ranks[m.name] += step
                    residual -= step * lora_size(m)
                    changed = True
    if abs(residual) > tolerance * budget:
        raise InputError(f"budget of {budget:,} cannot be met within {tolerance:.0%}: the closest allocation has "
                         f"{budget - residual:,} trainable parameters", hint="change the budget or the tier bands")
    return ranks
