"""Shared adapters: make a group's members use one ``lora_A`` and one ``lora_B`` ``nn.Parameter``.

Tying assigns the first member's (the representative's) parameters to every other member's
``lora_A``/``lora_B`` linear, so ``model.parameters()``, the optimizer and the checkpoint see each
factor once and autograd sums the members' gradients into it. ``state_dict()`` still lists every
member; peft's ``save_pretrained`` clones aliased tensors, so a saved adapter is a stock one in which
each member carries its group's values.
"""

from __future__ import annotations

import torch

from spectra_core.errors import InputError
from spectra_core.plan import AdapterPlan
from spectra_core.training.modeling import ADAPTER

FACTORS = ("lora_A", "lora_B")


def factor(layer: torch.nn.Module, which: str) -> torch.nn.Parameter:
    """The weight of a LoRA layer's ``lora_A`` or ``lora_B`` linear."""
    return getattr(layer, which)[ADAPTER].weight


def check_groups(plan: AdapterPlan, lora: dict[str, torch.nn.Module]) -> None:
    """Every group's members carry a LoRA with identical shapes, rank and alpha; else InputError."""
    for gid, members in plan.groups().items():
        missing = [m for m in members if m not in lora]
        if missing:
            raise InputError(f"group {gid}: {', '.join(missing)} carry no LoRA layer in the model",
                             hint="only modules the plan adapts (active, rank > 0) can share a LoRA")
        entries = [plan.modules[m] for m in members]
        kinds = {(e.shape, e.rank, e.alpha) for e in entries}
        shapes = {tuple(factor(lora[m], f).shape for f in FACTORS) for m in members}
        if len(kinds) > 1 or len(shapes) > 1:
            detail = ", ".join(f"{e.name} ({e.shape[0]}×{e.shape[1]}, r{e.rank}, alpha {e.alpha:g})" for e in entries)
            raise InputError(f"group {gid} would mix shapes or LoRA hyper-parameters: {detail}",
                             hint="a group may only hold modules of one weight shape, rank and alpha; "
                                  "fix the group ids in the plan or re-run the calibration")


def tie_groups(plan: AdapterPlan, lora: dict[str, torch.nn.Module]) -> None:
    """Point every member's factors at its group representative's parameters (idempotent)."""
    check_groups(plan, lora)
    for members in plan.groups().values():
        head = lora[members[0]]
        for name in members[1:]:
            for f in FACTORS:
                if factor(lora[name], f) is not factor(head, f):
                    getattr(lora[name], f)[ADAPTER].weight = factor(head, f)


def untie(layer: torch.nn.Module) -> None:
    """Give one member its own copies of its current factor values (new parameters)."""
    for f in FACTORS:
        p = factor(layer, f)
        getattr(layer, f)[ADAPTER].weight = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)


@torch.no_grad()
def merge_members(layers: list[torch.nn.Module]) -> None:
    """Set the first layer's factors to the best rank-r approximation of the members' mean update.

    With ``D = mean_i(B_i A_i)`` and ``D = U S Vᵀ``: ``A = V_rᵀ`` (orthonormal rows, so gradients keep
    flowing even where ``S`` is zero) and ``B = U_r S_r``. Used when regrouping joins trained modules.
    """
    head = layers[0]
    a, b = factor(head, "lora_A"), factor(head, "lora_B")
    mean = sum(factor(x, "lora_B").float() @ factor(x, "lora_A").float() for x in layers) / len(layers)
    u, s, vh = torch.linalg.svd(mean, full_matrices=False)
    r = a.shape[0]
    a.copy_(vh[:r].to(a.dtype))
    b.copy_((u[:, :r] * s[:r]).to(b.dtype))
