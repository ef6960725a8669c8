"""The core applies what strategies propose: validate every change first, then change model, optimizer
and plan once, recording each changed plan field in the history (see :mod:`spectra_core.changes`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError

from .. import adapters, experts
from ..expert_plan import carries_lora, split
from ..changes import Change, ModuleChange, Tie, Untie
from ..errors import PluginError
from ..plan import AdapterPlan, PlanChange

_CHANGE = TypeAdapter(Change)
HINT = "see the rebalancer / gradient merger contract in docs/reference/hooks.md"
OUTCOME = {
    "keep": "frozen; its update stays as a frozen LoRA",
    "drop": "frozen; its update dropped (B = 0)",
    "merge": "frozen; update merged into the float base weight (the LoRA is still saved in the adapter)",
}
KEPT_EXPERT = ("frozen; kept as a frozen LoRA: an expert's update merges only with its whole fused tensor "
               "(the merged export does that)")
KEPT_ON_QUANTIZED = ("frozen; kept as a frozen LoRA: merging into a 4-bit base would requantize it "
                     "(merge is exact on a float base only)")


def _parse(changes: Any, strategy: str) -> list[Tie | Untie | ModuleChange]:
    if not isinstance(changes, (list, tuple)):
        raise PluginError(f"strategy {strategy!r} returned {type(changes).__name__}, expected a list of changes "
                          "(spectra_core.changes)", hint=HINT)
    try:
        return [c if isinstance(c, (Tie, Untie, ModuleChange)) else _CHANGE.validate_python(c) for c in changes]
    except ValidationError as exc:
        raise PluginError(f"strategy {strategy!r} returned something that is not a change: {exc}", hint=HINT) from None


def _problems(plan: AdapterPlan, layers: dict[str, torch.nn.Module], changes: list[Any]) -> list[str]:
    out: list[str] = []
    seen: dict[str, str] = {}
    groups = set()
    for c in changes:
        names = c.modules if isinstance(c, Tie) else [c.module]
        for name in names:
            if name not in plan.modules:
                out.append(f"{c.kind} {name!r}: not a module of the plan")
                continue
            key = "group" if isinstance(c, (Tie, Untie)) else "module"
            if seen.get(name) == key:
                out.append(f"{c.kind} {name!r}: the module appears in two {key} changes")
            seen[name] = key
        if out:
            continue
        if isinstance(c, Tie):
            fused = [m for m in c.modules if plan.modules[m].kind == "expert"]
            if fused and len(fused) < len(c.modules):
                out.append(f"tie {c.group!r}: mixes MoE experts ({fused[0]}) and linear modules")
                continue
            if c.group in groups:
                out.append(f"tie {c.group!r}: two ties propose that group id")
            groups.add(c.group)
            entries = [plan.modules[m] for m in c.modules]
            missing = [m for m in c.modules if _layer(plan, layers, m) is None]
            kinds = {(e.shape, e.rank, e.alpha, e.lr_scale) for e in entries}
            if missing:
                out.append(f"tie {c.group!r}: {', '.join(missing)} carry no LoRA")
            elif len(kinds) > 1:
                out.append(f"tie {c.group!r}: members differ in shape, rank, alpha or lr_scale")
        elif isinstance(c, Untie):
            if plan.modules[c.module].group is None:
                out.append(f"untie {c.module!r}: the module is in no group")
        else:
            out.extend(_module_problems(plan, layers, c))
    return out


def _layer(plan: AdapterPlan, layers: dict[str, torch.nn.Module], name: str) -> torch.nn.Module | None:
    """The LoRA layer a plan entry trains through: its module's, or (an expert carrying a LoRA) its tensor's."""
    entry = plan.modules[name]
    if entry.kind != "expert":
        return layers.get(name)
    return layers.get(split(name)[0]) if carries_lora(plan, entry) else None


def _module_problems(plan: AdapterPlan, layers: dict[str, torch.nn.Module], c: ModuleChange) -> list[str]:
    entry, layer = plan.modules[c.module], _layer(plan, layers, c.module)
    out = []
    resizing = (c.rank is not None and c.rank != entry.rank) or (c.alpha is not None and c.alpha != entry.alpha)
    if (c.active or resizing) and layer is None:
        out.append(f"{c.module}: carries no LoRA (plan mode {plan.mode!r}), so it cannot be activated or resized; "
                   "a rebalancer that switches modules on needs mode all-inactive")
    if c.active is False and entry.active and c.on_deactivate == "drop" and plan.init.name == "loftq":
        out.append(f"{c.module}: on_deactivate 'drop' zeroes B, and with it the module's LoftQ correction of the "
                   "4-bit error (the plan's lora_init is loftq); deactivate it with 'keep' instead")
    if resizing and layer is not None:
        if entry.group is not None:
            out.append(f"{c.module}: resize of a module in group {entry.group!r}; untie it first")
        if adapters.is_merged(layer):
            out.append(f"{c.module}: resize of a LoRA already merged into the base")
        rank = c.rank or entry.rank
        if rank > min(entry.shape):
            out.append(f"{c.module}: rank {rank} exceeds the smaller dimension of its "
                       f"{entry.shape[0]}×{entry.shape[1]} weight")
        alpha = c.alpha if c.alpha is not None else entry.alpha
        if entry.kind == "expert" and layer is not None and not math.isclose(
                adapters.lora_scaling(alpha, rank, plan.use_rslora), adapters.scaling(layer), rel_tol=1e-9):
            out.append(f"{c.module}: rank {rank} with alpha {alpha:g} changes the LoRA scale its fused tensor's "
                       f"experts share ({adapters.scaling(layer):g}); keep alpha/rank fixed")
    return out


def apply_changes(model: torch.nn.Module, plan: AdapterPlan, changes: Any, *, strategy: str, step: int,
                  optimizer: torch.optim.Optimizer | None = None,
                  generator: torch.Generator | None = None) -> list[PlanChange]:
    """Validate ``changes`` (PluginError listing every problem; nothing applied), then apply untie →
    tie → module changes to ``model``/``optimizer``/``plan``; return the history entries added."""
    parsed = _parse(changes, strategy)
    layers = adapters.lora_layers(model)
    problems = _problems(plan, layers, parsed)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise PluginError(f"strategy {strategy!r} proposed changes the core cannot apply (none applied): {shown}",
                          hint=HINT)
    start = len(plan.history)
    record = {"step": step, "strategy": strategy}
    for c in (c for c in parsed if isinstance(c, Untie)):
        if plan.modules[c.module].kind == "module":  # an expert keeps its own slices of the tensor's LoRA
            adapters.untie(layers[c.module])
        plan.update(c.module, reason=c.reason, group=None, **record)
    for c in (c for c in parsed if isinstance(c, Tie)):
        _tie(model, plan, layers, c, record)
    adapters.tie_groups(model, plan)
    for c in (c for c in parsed if isinstance(c, ModuleChange)):
        _module(plan, layers, c, record, optimizer, generator)
    return plan.history[start:]


def _tie(model: torch.nn.Module, plan: AdapterPlan, layers: dict[str, torch.nn.Module], c: Tie,
         record: dict[str, Any]) -> None:
    """Relabel an existing group with exactly these members; else untie members from their old groups
    (so those keep their parameters), start the shared LoRA, and label the members. Experts share by
    value (:mod:`spectra_core.experts`): they start from the first member's factors, or the mean."""
    same = any(set(ms) == set(c.modules) for ms in plan.groups().values())
    if not same and plan.modules[c.modules[0]].kind == "expert":
        members = experts.members_of(model, plan, c.modules)
        if c.init == "mean":
            experts.start_from_mean(members)
        else:
            experts.tie_values(members)
    elif not same:
        for name in c.modules:
            if plan.modules[name].group is not None:
                adapters.untie(layers[name])
        if c.init == "mean":
            adapters.start_from_mean([layers[m] for m in c.modules])
    for name in c.modules:
        plan.update(name, reason=c.reason, group=c.group, **record)


def _module(plan: AdapterPlan, layers: dict[str, torch.nn.Module], c: ModuleChange, record: dict[str, Any],
            optimizer: torch.optim.Optimizer | None, generator: torch.Generator | None) -> None:
    entry, layer = plan.modules[c.module], _layer(plan, layers, c.module)
    expert = split(c.module)[1] if entry.kind == "expert" else None
    rank = c.rank if c.rank is not None else entry.rank
    alpha = c.alpha if c.alpha is not None else entry.alpha
    outcome = []
    if layer is not None and (rank, alpha) != (entry.rank, entry.alpha):
        if expert is None:
            done = adapters.resize(layer, rank, alpha, use_rslora=plan.use_rslora, optimizer=optimizer,
                                   generator=generator)
        else:
            done = adapters.resize_expert(layer, expert, entry.rank, rank, alpha, use_rslora=plan.use_rslora,
                                          optimizer=optimizer, generator=generator)
        outcome.append(done.describe())
    if c.active is False and entry.active and layer is not None:
        if c.on_deactivate == "drop" and expert is None:
            adapters.drop_update(layer)
        elif c.on_deactivate == "drop":
            adapters.drop_expert_update(layer, expert)
        if c.on_deactivate == "merge" and expert is not None:
            outcome.append(KEPT_EXPERT)
        else:
            merged = c.on_deactivate == "merge" and adapters.merge_into_base(layer)
            outcome.append(KEPT_ON_QUANTIZED if c.on_deactivate == "merge" and not merged else OUTCOME[c.on_deactivate])
    fields = {k: v for k, v in (("active", c.active), ("rank", c.rank), ("alpha", c.alpha), ("lr_scale", c.lr_scale),
                                ("tier", c.tier), ("score", c.score)) if v is not None}
    reason = "; ".join([c.reason, *outcome])
    plan.update(c.module, reason=reason, **fields, **record)


def check_merged_gradients(new: Any, found: list[Any], *, strategy: str) -> None:
    """A merger's returned gradients: known groups and factors, the shared factor's shape, finite."""
    if not isinstance(new, dict):
        raise PluginError(f"gradient merger {strategy!r}: merge_gradients() returned {type(new).__name__}, "
                          "expected a dict group -> {'A': tensor, 'B': tensor}", hint=HINT)
    by_id = {g.group: g for g in found}
    for gid, grads in new.items():
        group = by_id.get(gid)
        if group is None or not isinstance(grads, dict):
            raise PluginError(f"gradient merger {strategy!r}: merge_gradients() returned gradients for {gid!r}, "
                              f"which is not a group with gradients now ({', '.join(by_id) or 'none'})", hint=HINT)
        for f, g in grads.items():
            want = group.summed.get(f)
            if want is None or not torch.is_tensor(g) or g.shape != want.shape:
                raise PluginError(f"gradient merger {strategy!r}: gradient {gid}.{f} must be a tensor of shape "
                                  f"{tuple(want.shape) if want is not None else '(factor A or B)'}", hint=HINT)
            if not torch.isfinite(g).all():
                raise PluginError(f"gradient merger {strategy!r}: gradient {gid}.{f} is not finite", hint=HINT)
