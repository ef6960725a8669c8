"""From a session to groups in the plan: measure gradients, cluster each bucket, record the groups."""

from __future__ import annotations

from spectra_core.plan import AdapterPlan
from spectra_core.strategies import TrainingSession

from .calibration import collect_signals
from .grouping import agglomerate, mean_pairwise
from .options import GroupingOptions
from .similarity import Bucket, buckets, cosine_matrix


def candidates(plan: AdapterPlan) -> list[str]:
    """Modules that train a LoRA of their own (active, rank > 0), in plan order."""
    return [m.name for m in plan.active() if m.rank > 0]


def measure(session: TrainingSession, plan: AdapterPlan, options: GroupingOptions) -> list[Bucket]:
    """Buckets of the plan's candidates, each with the cosine matrix of its members' gradient sketches."""
    names = candidates(plan)
    signals = collect_signals(session, names, batches=options.calibration_batches, dim=options.sketch_dim,
                              seed=options.seed)
    found = buckets(plan, names)
    for b in found:
        b.similarity = cosine_matrix([signals[n] for n in b.names])
    return found


def assign(plan: AdapterPlan, found: list[Bucket], options: GroupingOptions, *, step: int,
           strategy: str) -> dict[str, list[str]]:
    """Cluster every bucket, write group ids (g0, g1, … in plan order; singletons None) into ``plan``
    with a history entry per change, and return group id → members."""
    clusters: list[tuple[list[str], float, str]] = []
    for b in found:
        for members in agglomerate(b.similarity, options.threshold, layers=b.layers, linkage=options.linkage,
                                   max_size=options.max_group_size, only_contiguous=options.contiguous):
            if len(members) > 1:
                clusters.append(([b.names[i] for i in members], mean_pairwise(b.similarity, members), b.label))
    order = {name: i for i, name in enumerate(plan.modules)}
    clusters.sort(key=lambda c: order[c[0][0]])
    wanted = {name: f"g{i}" for i, (members, _, _) in enumerate(clusters) for name in members}
    groups = {f"g{i}": members for i, (members, _, _) in enumerate(clusters)}
    reasons = {name: f"{len(members)} {label} modules share one LoRA: mean pairwise gradient cosine {cos:.3f} "
                     f"({options.linkage} linkage ≥ {options.threshold:g})"
               for members, cos, label in clusters for name in members}
    for name, entry in plan.modules.items():
        new = wanted.get(name)
        if entry.group != new:
            reason = reasons.get(name, f"gradient cosine with same-shape modules below {options.threshold:g}: "
                                       "trains its own LoRA")
            plan.update(name, step=step, strategy=strategy, reason=reason, group=new)
    return groups
