"""From a session to groups in the plan: measure gradients, cluster each bucket, record the groups."""

from __future__ import annotations

from spectra_core import AdapterPlan, Change, Tie, TrainingSession, Untie

from .grouping import agglomerate, mean_pairwise
from .options import GroupingOptions
from .similarity import Bucket, buckets, cosine_matrix


def candidates(plan: AdapterPlan) -> list[str]:
    """Modules and MoE experts that train a LoRA of their own (active, rank > 0), in plan order (experts
    of one fused tensor kind bucket together, across their layer and others)."""
    return [m.name for m in plan.active() if m.rank > 0]


def measure(session: TrainingSession, plan: AdapterPlan, options: GroupingOptions) -> list[Bucket]:
    """Buckets of the plan's candidates, each with the cosine matrix of its members' gradient sketches."""
    names = candidates(plan)
    signals = session.gradient_signals(names, batches=options.calibration_batches, dim=options.sketch_dim,
                                       seed=options.seed)
    found = buckets(plan, names)
    for b in found:
        b.similarity = cosine_matrix([signals[n] for n in b.names])
    return found


def assign(plan: AdapterPlan, found: list[Bucket], options: GroupingOptions) -> tuple[list[Change], dict[str, list[str]]]:
    """Cluster every bucket into groups (g0, g1, … in plan order; singletons stay alone): the ``Tie``
    changes for the groups and ``Untie`` for modules leaving one, and group id → members."""
    clusters: list[tuple[list[str], float, str]] = []
    for b in found:
        for members in agglomerate(b.similarity, options.threshold, layers=b.layers, linkage=options.linkage,
                                   max_size=options.max_group_size, only_contiguous=options.contiguous):
            if len(members) > 1:
                clusters.append(([b.names[i] for i in members], mean_pairwise(b.similarity, members), b.label))
    order = {name: i for i, name in enumerate(plan.modules)}
    clusters.sort(key=lambda c: order[c[0][0]])
    groups = {f"g{i}": members for i, (members, _, _) in enumerate(clusters)}
    changes: list[Change] = [
        Tie(group=gid, modules=members, init="mean",
            reason=f"{len(members)} {label} modules share one LoRA: mean pairwise gradient cosine {cos:.3f} "
                   f"({options.linkage} linkage ≥ {options.threshold:g})")
        for gid, (members, cos, label) in zip(groups, clusters)]
    grouped = {m for ms in groups.values() for m in ms}
    changes += [Untie(module=name, reason=f"gradient cosine with same-shape modules below {options.threshold:g}: "
                                          "trains its own LoRA")
                for name, entry in plan.modules.items() if entry.group is not None and name not in grouped]
    return changes, groups
