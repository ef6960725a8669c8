"""Change the rank of a live peft LoRA layer, keeping its update and its Adam state consistent.

Shrinking replaces ``s·B·A`` by its best rank-k approximation (truncated SVD, Eckart–Young); growing
appends random rows to ``A`` and zero columns to ``B``, so the update is unchanged and the new
directions still receive gradients. When the scale ``s`` changes (alpha or rank), both factors are
multiplied by ``sqrt(s/s')`` so ``s'·B'·A'`` equals the kept update.

Adam moments follow the parameters into the new basis: with ``A' = P_A·A`` and ``B' = B·P_B``, the
gradients are ``dA' = (s'/s)·P_Bᵀ·dA`` and ``dB' = (s'/s)·dB·P_Aᵀ``, so first moments are mapped by
the same matrices, second moments by their element-wise squares (the diagonal approximation). For a
growth this is exact: old entries are copied, new ones start at zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spectra_core.errors import InputError
from spectra_core.training.modeling import ADAPTER


@dataclass(frozen=True)
class Resize:
    """What one resize did; ``energy_kept`` is the share of ‖s·B·A‖²_F the new update keeps."""

    old_rank: int
    new_rank: int
    energy_kept: float


def factored_svd(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``U, S, Vh`` of ``b @ a`` (out×r times r×in) in float64, from two QRs and an r×r SVD."""
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    um, s, vmh = torch.linalg.svd(rb @ ra.T)
    return qb @ um, s, vmh @ qa.T


def update_spectrum(layer: torch.nn.Module) -> torch.Tensor:
    """Singular values of the layer's update ``s·B·A`` (float64, descending)."""
    b, a = layer.lora_B[ADAPTER].weight.detach(), layer.lora_A[ADAPTER].weight.detach()
    return factored_svd(b, a)[1] * abs(layer.scaling[ADAPTER])


def energy_rank(spectrum: torch.Tensor, fraction: float) -> int:
    """Fewest singular values keeping ``fraction`` of the energy (0 for a zero update)."""
    energy = spectrum.double() ** 2
    if float(energy.sum()) == 0.0:
        return 0
    share = torch.cumsum(energy, 0) / energy.sum()
    return int(torch.searchsorted(share, torch.tensor(fraction - 1e-12, dtype=share.dtype))) + 1


def scaling(alpha: float, rank: int, use_rslora: bool) -> float:
    return alpha / (math.sqrt(rank) if use_rslora else rank)


def resize_lora(layer: torch.nn.Module, rank: int, alpha: float, *, use_rslora: bool,
                optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None) -> Resize:
    """Give ``layer``'s LoRA rank ``rank`` and alpha ``alpha`` (new Parameters; ``optimizer`` follows)."""
    lin_a, lin_b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
    a, b = lin_a.weight.detach(), lin_b.weight.detach()
    old, (out_f, in_f) = a.shape[0], (b.shape[0], a.shape[1])
    if not 0 < rank <= min(out_f, in_f):
        raise InputError(f"cannot resize a LoRA on a {out_f}×{in_f} weight to rank {rank}: "
                         f"a rank must be between 1 and {min(out_f, in_f)}", hint="lower the tier's rank")
    s_old, s_new = layer.scaling[ADAPTER], scaling(alpha, rank, use_rslora)
    c = math.sqrt(s_old / s_new)
    if rank >= old:
        new_a = torch.cat([c * a.double(), _fresh_rows(rank - old, in_f, generator).to(a.device)])
        new_b = torch.cat([c * b.double(), b.new_zeros(out_f, rank - old, dtype=torch.float64)], dim=1)
        p_a = c * torch.eye(rank, old, dtype=torch.float64, device=a.device)
        p_b, energy = p_a.T, 1.0
    else:
        u, s, vh = factored_svd(b, a)
        total = float((s ** 2).sum())
        if total == 0.0:  # B = 0 (fresh or parked LoRA): keep the first rows of A, which still learn
            p_a = c * torch.eye(rank, old, dtype=torch.float64, device=a.device)
            p_b, energy = p_a.T, 1.0
            new_a, new_b = p_a @ a.double(), b.double() @ p_b
        else:
            root = s[:rank].sqrt()
            live = root > root[0] * 1e-6
            inv = torch.where(live, 1 / root, torch.zeros_like(root))
            new_b, new_a = c * u[:, :rank] * root * live, c * root[:, None] * vh[:rank]
            new_a[~live] = _fresh_rows(int((~live).sum()), in_f, generator).to(a.device)
            p_a = c * (u[:, :rank] * inv).T @ b.double()
            p_b = c * a.double() @ (vh[:rank].T * inv)
            energy = float((s[:rank] ** 2).sum()) / total
    ratio = s_new / s_old
    _replace(lin_a, new_a, optimizer, lambda m, sq: (ratio * p_b.T) ** (2 if sq else 1) @ m)
    _replace(lin_b, new_b, optimizer, lambda m, sq: m @ (ratio * p_a.T) ** (2 if sq else 1))
    lin_a.out_features = lin_b.in_features = rank
    layer.r[ADAPTER], layer.lora_alpha[ADAPTER], layer.scaling[ADAPTER] = rank, alpha, s_new
    return Resize(old_rank=old, new_rank=rank, energy_kept=energy)


def _fresh_rows(n: int, in_f: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` new rows of A, drawn like peft's kaiming-uniform(a=√5) init: U(-1/√in, 1/√in)."""
    return (torch.rand(n, in_f, generator=generator, dtype=torch.float64) * 2 - 1) / math.sqrt(in_f)


def _replace(linear: torch.nn.Linear, value: torch.Tensor, optimizer: torch.optim.Optimizer | None, mapping) -> None:
    """Give ``linear`` a new weight Parameter holding ``value``; move its optimizer state and group slot.

    Each state tensor of the old weight's shape is mapped into the new basis (second moments: keys
    with 'sq'). A new Parameter, not a ``.data`` swap: autograd caches a leaf's shape.
    """
    old = linear.weight
    new = torch.nn.Parameter(value.to(old.dtype).contiguous(), requires_grad=old.requires_grad)
    linear.weight = new
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state:
        optimizer.state[new] = {k: mapping(v.double(), "sq" in k).to(v.dtype).contiguous()
                                if torch.is_tensor(v) and v.shape == old.shape else v for k, v in state.items()}


def is_float_base(layer: torch.nn.Module) -> bool:
    """True when the layer's base weight is a plain float tensor (merging into it is exact)."""
    base = layer.get_base_layer()
    weight = getattr(base, "weight", None)
    return (isinstance(base, torch.nn.Linear) and type(weight) is torch.nn.Parameter
            and weight.dtype.is_floating_point and not hasattr(weight, "quant_state"))


def sync_peft_config(model: torch.nn.Module, plan) -> None:
    """Make the peft model's LoraConfig describe ``plan`` (r, alpha, rank/alpha patterns) for save_pretrained."""
    config = model.peft_config[ADAPTER]
    kwargs = plan.lora_kwargs()
    config.r, config.lora_alpha = kwargs["r"], kwargs["lora_alpha"]
    config.rank_pattern, config.alpha_pattern = kwargs["rank_pattern"], kwargs["alpha_pattern"]
