"""Every contact with peft: the plan becomes LoRA layers, and LoRA layers are read and changed only here.

Strategies never see a peft layer. They get read-only :class:`AdapterHandle` objects from
``session.adapter(name)`` and propose changes (:mod:`spectra_core.changes`) that the core applies
with the functions below: resize (truncated SVD / zero-pad, optimizer state remapped), tie and untie
a group's shared LoRA, merge into the base, keep ``peft_config`` in step with the plan.

A plan entry adapts either a linear *module* (``kind: module``, peft ``target_modules``) or one *expert*
of a fused 3-D MoE tensor (``kind: expert``): peft gives the tensor one ``target_parameters`` LoRA, of
which each expert owns its rank components (:mod:`spectra_core.experts`); both are reached through the
same handle, and an expert is resized on its own.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import ConfigError, InputError
from .expert_plan import by_tensor, carries_lora, components, lora_scaling, lr_scale, split, tensor_lora
from .quantized import dense_weight

if TYPE_CHECKING:
    from .plan import AdapterPlan

ADAPTER = "default"
PEFT_PREFIX = "base_model.model."
FACTORS = ("A", "B")


# ----- plan -> peft ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeftTarget:
    """One LoRA peft builds: a linear module, or a fused expert tensor (``parameter``) at its experts' largest rank."""

    name: str
    kind: str
    rank: int
    alpha: float


def peft_targets(plan: AdapterPlan) -> list[PeftTarget]:
    """The LoRA layers that realise ``plan``, in plan order (the expert tensors after the modules)."""
    out = [PeftTarget(m.name, "module", m.rank, m.alpha) for m in plan.injected() if m.kind == "module"]
    for tensor, entries in by_tensor(plan).items():
        lora = tensor_lora(plan, tensor, entries)
        if lora is not None:
            out.append(PeftTarget(tensor, "parameter", *lora))
    return out


def lora_config_kwargs(plan: AdapterPlan) -> dict[str, Any]:
    """Arguments for ``peft.LoraConfig`` that realise ``plan`` (ranks and alphas via patterns)."""
    targets = peft_targets(plan)
    if not targets:
        raise InputError("the adapter plan adapts no module",
                         hint="lower the selection threshold or check the allocator's target types")
    ranks, alphas = [t.rank for t in targets], [t.alpha for t in targets]
    base, base_alpha = max(ranks, key=ranks.count), max(alphas, key=alphas.count)
    kwargs: dict[str, Any] = {
        "r": base,
        "lora_alpha": base_alpha,
        "target_modules": [t.name for t in targets if t.kind == "module"],
        "rank_pattern": {re.escape(t.name): t.rank for t in targets if t.rank != base},
        "alpha_pattern": {re.escape(t.name): t.alpha for t in targets if t.alpha != base_alpha},
        "use_rslora": plan.use_rslora,
    }
    parameters = [t.name for t in targets if t.kind == "parameter"]
    if parameters:
        kwargs["target_parameters"] = parameters
    return kwargs


def lora_config(plan: AdapterPlan, *, task_type: str = "CAUSAL_LM", **extra: Any) -> Any:
    """The ``peft.LoraConfig`` of ``plan`` (no dropout); ``task_type``: peft's, see :func:`task_type_of`;
    ``extra``: more LoraConfig fields."""
    from peft import LoraConfig

    return LoraConfig(**lora_config_kwargs(plan), **extra, task_type=task_type, lora_dropout=0)


def task_type_of(base: torch.nn.Module) -> str:
    """peft's task type for ``base``: ``SEQ_2_SEQ_LM`` for an encoder-decoder, else ``CAUSAL_LM``."""
    from .automodel import is_seq2seq

    return "SEQ_2_SEQ_LM" if is_seq2seq(base.config) else "CAUSAL_LM"


def inject(base: torch.nn.Module, plan: AdapterPlan, *, seed: int = 0, config: dict[str, Any] | None = None,
           initialize: Callable[[Any], None] | None = None) -> Any:
    """``get_peft_model(base, lora_config(plan, **config))`` with LoRA initialised from ``seed``, then by
    ``initialize(model)`` (e.g. EVA / LoftQ, :mod:`spectra_core.training.lora_init`); afterwards the
    plan's groups are tied and requires_grad follows the plan (inactive LoRA frozen)."""
    from peft import get_peft_model

    config = {"fan_in_fan_out": stores_in_out(base, plan), **(config or {})}
    torch.manual_seed(seed)
    model = get_peft_model(base, lora_config(plan, task_type=task_type_of(base), **config),
                           low_cpu_mem_usage="eva_config" in config)  # EVA fills the weights (peft's advice)
    quantize_wrapped_experts(model)
    zero_unowned(model, plan)
    if initialize is not None:
        initialize(model)
    tie_groups(model, plan)
    set_trainable(model, plan)
    return model


def stores_in_out(base: torch.nn.Module, plan: AdapterPlan) -> bool:
    """True when the plan adapts GPT-2-style ``Conv1D`` layers (weights stored ``in × out``: peft's
    ``fan_in_fan_out``). A quantized base holds them as ``out × in`` 4-bit linears instead."""
    from transformers.pytorch_utils import Conv1D

    modules = dict(base.named_modules())
    return any(isinstance(modules.get(m.name), Conv1D) for m in plan.injected() if m.kind == "module")


def load(base: torch.nn.Module, directory: Any, plan: AdapterPlan) -> Any:
    """A saved stock peft adapter on ``base``, frozen, with the plan's groups tied again."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, directory, is_trainable=False)
    quantize_wrapped_experts(model)
    tie_groups(model, plan)
    return model


def quantize_wrapped_experts(model: torch.nn.Module) -> None:
    """On a bitsandbytes 4-bit base, quantize the fused expert tensors now that peft has wrapped them
    (:func:`spectra_core.quant_coverage.quantize_bnb_experts`), and hook the wrappers around peft's
    handling of parametrized experts (:func:`drop_stale_factor_proxies`)."""
    from .quant_coverage import bnb_4bit_config, quantize_bnb_experts

    config = bnb_4bit_config(model.get_base_model())
    if config is not None and quantize_bnb_experts(model, config):
        drop_stale_factor_proxies(model)


def drop_stale_factor_proxies(model: torch.nn.Module) -> int:
    """Work around peft 0.21.2 on parametrized expert tensors (bitsandbytes 4-bit experts), two bugs:

    * after each forward its ``ParamWrapper`` removes only a ``_LoraParameterProxy``, so the
      ``_LoraFactorsProxy`` it registers for fused experts would stay and pile up, one more each
      forward: a forward hook on each such wrapper removes it;
    * nested wrappers (``gate_up_proj`` and ``down_proj`` of one experts module) read the inner tensor
      inside the outer one's parametrization cache before the inner LoRA is registered, so the expert
      forward would use a cached value without that LoRA (no gradient): a pre-hook on the experts
      module drops its cached values just before its forward.

    Returns the number of wrappers hooked (0 on float experts, where peft works as is)."""
    from peft.tuners.lora.layer import ParamWrapper, _LoraFactorsProxy
    from torch.nn.utils import parametrize

    def fresh(module: torch.nn.Module, *_: Any) -> None:
        for name in module.parametrizations:
            parametrize._cache.pop((id(module), name), None)

    def drop(layer: torch.nn.Module, *_: Any) -> None:
        parametrizations = layer.get_base_layer().parametrizations
        chain = parametrizations[layer.parameter_name] if layer.parameter_name in parametrizations else []
        for i in reversed(range(len(chain))):
            if isinstance(chain[i], _LoraFactorsProxy):
                del chain[i]

    hooked, bases = 0, set()
    for layer in model.modules():
        base = layer.get_base_layer() if isinstance(layer, ParamWrapper) else None
        if base is not None and hasattr(base, "parametrizations"):
            layer.register_forward_hook(drop, always_call=True)  # also when checkpointing stops a recompute early
            hooked += 1
            if id(base) not in bases:
                base.register_forward_pre_hook(fresh)
                bases.add(id(base))
    return hooked


def merged_model(base: torch.nn.Module, directory: Any) -> Any:
    """A saved stock peft adapter merged into a float ``base``: the plain transformers model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, directory).merge_and_unload()


def sync_config(model: torch.nn.Module, plan: AdapterPlan) -> None:
    """Make the model's ``LoraConfig`` describe ``plan`` (r, alpha, patterns), so ``save_pretrained``
    writes an adapter stock peft reloads with the current ranks."""
    config, kwargs = model.peft_config[ADAPTER], lora_config_kwargs(plan)
    config.r, config.lora_alpha = kwargs["r"], kwargs["lora_alpha"]
    config.rank_pattern, config.alpha_pattern = kwargs["rank_pattern"], kwargs["alpha_pattern"]


# ----- finding layers ---------------------------------------------------------------------------------
def _plan_name(module_name: str, layer: torch.nn.Module) -> str:
    name = module_name.removeprefix(PEFT_PREFIX).replace(".base_layer", "")
    parameter = getattr(layer, "parameter_name", None)
    return f"{name}.{parameter}" if parameter else name


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Plan name → the peft layer carrying its LoRA (a parameter target is named ``module.param``)."""
    from peft.tuners.lora import LoraLayer

    return {_plan_name(n, m): m for n, m in model.named_modules()
            if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


def factors(layer: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The live LoRA parameters ``{"A": r×in, "B": out×r}`` of a layer."""
    return {"A": layer.lora_A[ADAPTER].weight, "B": layer.lora_B[ADAPTER].weight}


def lora_parameters(layer: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [*layer.lora_A[ADAPTER].parameters(), *layer.lora_B[ADAPTER].parameters()]


def trainable_layers(plan: AdapterPlan) -> dict[str, float]:
    """LoRA layer name → LR scale, for the layers that train: active modules, and expert tensors with an
    active expert (at the largest LR scale of their active experts, see :mod:`spectra_core.experts`)."""
    out = {m.name: m.lr_scale for m in plan.active() if m.kind == "module"}
    for tensor, entries in by_tensor(plan).items():
        if any(m.active and m.rank > 0 for m in entries):
            out[tensor] = lr_scale(plan, entries)
    return out


def set_trainable(model: torch.nn.Module, plan: AdapterPlan) -> None:
    """LoRA of active modules and experts trains; every other parameter is frozen (a tied LoRA trains if
    any member is active)."""
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = trainable_layers(plan)
    for name, layer in lora_layers(model).items():
        if name in trainable:
            for p in lora_parameters(layer):
                p.requires_grad_(True)


def check_plan(plan: AdapterPlan, model: torch.nn.Module) -> None:
    """Every injected module and expert exists in ``model`` (before injection), and its rank fits its shape."""
    modules = dict(model.named_modules())
    for m in plan.injected():
        tensor, index = split(m.name) if m.kind == "expert" else (m.name, 0)
        owner, _, attr = tensor.rpartition(".")
        found = modules.get(m.name) if m.kind == "module" else getattr(modules.get(owner), attr, None)  # parametrized too
        if found is None or (m.kind == "expert" and (found.ndim != 3 or index >= found.shape[0])):
            raise InputError(f"plan {m.kind} {m.name!r} is not in the model",
                             hint="re-run `spectra plan` for this model (the plan was made for another one)")
        out_f, in_f = m.shape[-2], m.shape[-1]
        if m.kind == "module":
            out_f, in_f = getattr(found, "out_features", out_f), getattr(found, "in_features", in_f)
        if m.rank > min(out_f, in_f):
            raise InputError(f"rank {m.rank} of {m.name} exceeds its smaller dimension "
                             f"(weight {out_f}×{in_f}): a LoRA rank must be ≤ {min(out_f, in_f)}",
                             hint="lower the rank (allocator options) for this module type")


# ----- reading ---------------------------------------------------------------------------------------
def scaling(layer: torch.nn.Module) -> float:
    return float(layer.scaling[ADAPTER])


def is_merged(layer: torch.nn.Module, adapter: str = ADAPTER) -> bool:
    return adapter in getattr(layer, "merged_adapters", [])


def base_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The frozen base weight as float32 (4-bit bases dequantized; a parameter target's own tensor)."""
    if hasattr(layer, "get_param"):
        return layer.get_param().detach().float()
    weight = dense_weight(layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer).float()
    return weight.T if getattr(layer, "fan_in_fan_out", False) else weight


@torch.no_grad()
def delta(layer: torch.nn.Module, adapter: str = ADAPTER) -> torch.Tensor:
    """The LoRA update ``scaling · B · A`` in the base weight's layout (``out × in`` for a Conv1D too;
    a parameter target's own layout), float32 (peft's own formula)."""
    update = layer.get_delta_weight(adapter).float()
    return update.T if getattr(layer, "fan_in_fan_out", False) else update


@torch.no_grad()
def effective_weight(layer: torch.nn.Module, *, all_active: bool = False) -> torch.Tensor:
    """Base weight + LoRA update (float32); an update already merged into the base is not added twice.
    ``all_active``: the update of every adapter peft has active on the layer (any peft model), not only ours."""
    weight = base_weight(layer)
    for adapter in (layer.active_adapters if all_active else [ADAPTER]):
        if adapter in layer.lora_A and not is_merged(layer, adapter):
            weight = weight + delta(layer, adapter)
    return weight


def factored_svd(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``U, S, Vh`` of ``b @ a`` (out×r times r×in) in float64, from two QRs and an r×r SVD."""
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    um, s, vmh = torch.linalg.svd(rb @ ra.T)
    return qb @ um, s, vmh @ qa.T


def update_singular_values(layer: torch.nn.Module) -> torch.Tensor:
    """Singular values of a linear module's update ``scaling · B · A`` (float64, descending)."""
    f = factors(layer)
    return factored_svd(f["B"].detach(), f["A"].detach())[1] * abs(scaling(layer))


class AdapterHandle:
    """A read-only view of one plan entry's LoRA, for strategies (``session.adapter(name)``).

    ``kind`` is ``module`` (a linear layer) or ``expert`` (one expert of a fused MoE tensor, see
    :class:`ExpertHandle`); ``shape`` is the base weight's ``out × in``; ``rank``/``alpha``/``scaling``
    are the live values. Every tensor returned is a detached copy: changing it changes nothing in the model.
    """

    kind = "module"

    def __init__(self, name: str, layer: torch.nn.Module) -> None:
        self.name = name
        self._layer = layer

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._layer.out_features, self._layer.in_features)

    @property
    def rank(self) -> int:
        return int(self._layer.r[ADAPTER])

    @property
    def alpha(self) -> float:
        return float(self._layer.lora_alpha[ADAPTER])

    @property
    def scaling(self) -> float:
        return scaling(self._layer)

    @property
    def merged(self) -> bool:
        """True when the update was merged into the base weight (it no longer trains)."""
        return is_merged(self._layer)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of ``(A, B)``: A is r×in, B is out×r."""
        f = factors(self._layer)
        return f["A"].detach().clone(), f["B"].detach().clone()

    def delta(self) -> torch.Tensor:
        """The update ``scaling · B · A`` in the base weight's shape, float32."""
        return delta(self._layer)

    def base_weight(self) -> torch.Tensor:
        """The frozen base weight, float32 (4-bit bases dequantized)."""
        return base_weight(self._layer)

    def effective_weight(self) -> torch.Tensor:
        """Base weight + update, float32."""
        return effective_weight(self._layer)

    def singular_values(self) -> torch.Tensor:
        """Singular values of the update (float64, descending)."""
        return update_singular_values(self._layer)

    def __repr__(self) -> str:
        return f"AdapterHandle({self.name!r}, shape={self.shape}, rank={self.rank}, alpha={self.alpha:g})"


class ExpertHandle(AdapterHandle):
    """One expert's share of a fused tensor's LoRA: its ``rank`` components (its plan entry's rank),
    oriented ``out × in`` like its plan entry and its scan slice."""

    kind = "expert"

    def __init__(self, name: str, layer: torch.nn.Module, rank: int, alpha: float) -> None:
        super().__init__(name, layer)
        self.index = split(name)[1]
        self._rank, self._alpha = rank, alpha

    def _orient(self, t: torch.Tensor) -> torch.Tensor:
        """A slice in the parameter's own layout, made ``out × in``."""
        return t.T if getattr(self._layer.get_base_layer(), "is_transposed", False) else t

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._orient(self._layer.get_param()[self.index]).shape)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def alpha(self) -> float:
        return self._alpha

    @property
    def merged(self) -> bool:
        return False

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of this expert's ``(A, B)``: A is rank×in, B is out×rank (peft's in/out of the tensor)."""
        f = factors(self._layer)
        a, b = expert_factors(f["A"].detach(), f["B"].detach(), experts_of(self._layer))
        return a[self.index][:self._rank].clone(), b[self.index][:, :self._rank].clone()

    def delta(self) -> torch.Tensor:
        a, b = self.factors()
        update = (b.double() @ a.double() * self.scaling).float()  # peft's own layout of the tensor
        return self._orient(update if self._layer._did_swap_in_out_features else update.T).contiguous()

    def base_weight(self) -> torch.Tensor:
        return self._orient(base_weight(self._layer)[self.index]).contiguous()

    def effective_weight(self) -> torch.Tensor:
        return self.base_weight() + self.delta()

    def singular_values(self) -> torch.Tensor:
        a, b = self.factors()
        return factored_svd(b, a)[1] * abs(self.scaling)


def component_masks(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-component ``values`` (``[experts, rank]``) laid out as a fused tensor's factors: A rows
    expert-major (``[E·r, 1]``), B columns rank-major (``[1, r·E]``)."""
    return values.reshape(-1, 1), values.T.reshape(1, -1)


@torch.no_grad()
def zero_unowned(model: torch.nn.Module, plan: AdapterPlan) -> None:
    """Zero the components of every fused tensor's LoRA that no expert owns (:mod:`spectra_core.experts`)."""
    layers = lora_layers(model)
    for tensor, entries in by_tensor(plan).items():
        layer = layers.get(tensor)
        if layer is None:
            continue
        live, _ = components(plan, entries, experts_of(layer), int(layer.r[ADAPTER]))
        for p, mask in zip(factors(layer).values(), component_masks(live)):
            p.mul_(mask.to(p.device, p.dtype))


def handles(model: torch.nn.Module, plan: AdapterPlan) -> dict[str, AdapterHandle]:
    """The handle of every plan entry that carries a LoRA in ``model``, in model order."""
    tensors = by_tensor(plan)
    out: dict[str, AdapterHandle] = {}
    for name, layer in lora_layers(model).items():
        if name not in tensors:
            out[name] = AdapterHandle(name, layer)
            continue
        for m in tensors[name]:
            if carries_lora(plan, m):
                out[m.name] = ExpertHandle(m.name, layer, m.rank, m.alpha)
    return out


# ----- changing (the core only) --------------------------------------------------------------------------
@dataclass(frozen=True)
class Resized:
    """What one resize did; ``energy_kept`` is the share of ‖s·B·A‖²_F the new update keeps."""

    old_rank: int
    new_rank: int
    energy_kept: float

    def describe(self) -> str:
        if self.new_rank >= self.old_rank:
            return f"rank {self.old_rank} -> {self.new_rank} by zero-padding B (update unchanged)"
        return (f"rank {self.old_rank} -> {self.new_rank} by truncated SVD of BA, "
                f"{self.energy_kept:.1%} of its energy kept")


def resize(layer: torch.nn.Module, rank: int, alpha: float, *, use_rslora: bool,
           optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None) -> Resized:
    """Give ``layer``'s LoRA rank ``rank`` and alpha ``alpha`` (new Parameters; ``optimizer`` follows).

    Shrinking replaces ``s·B·A`` by its best rank-k approximation (truncated SVD, Eckart–Young);
    growing appends random rows to ``A`` and zero columns to ``B`` (update unchanged, new directions
    still learn). A changed scale ``s`` is absorbed by multiplying both factors by ``sqrt(s/s')``.
    Adam moments follow into the new basis: with ``A' = P_A·A`` and ``B' = B·P_B`` the gradients are
    ``dA' = (s'/s)·P_Bᵀ·dA`` and ``dB' = (s'/s)·dB·P_Aᵀ``; first moments are mapped by those
    matrices, second moments by their element-wise squares (diagonal approximation; exact for growth).
    A fused expert tensor (peft ``target_parameters``) has each expert's components resized on its own, all to ``rank``.
    """
    lin_a, lin_b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
    a, b = lin_a.weight.detach(), lin_b.weight.detach()
    experts = experts_of(layer)
    old, (out_f, in_f) = a.shape[0] // experts, (b.shape[0], a.shape[1])
    if not 0 < rank <= min(out_f, in_f):
        raise InputError(f"cannot resize a LoRA on a {out_f}×{in_f} weight to rank {rank}: "
                         f"a rank must be between 1 and {min(out_f, in_f)}", hint="lower the requested rank")
    s_old, s_new = scaling(layer), lora_scaling(alpha, rank, use_rslora)
    c = math.sqrt(s_old / s_new)
    parts = [_resized(a_e, b_e, rank, c, generator) for a_e, b_e in zip(*expert_factors(a, b, experts))]
    new_a = torch.cat([p.a for p in parts])
    new_b = torch.stack([p.b for p in parts], dim=-1).reshape(out_f, rank * experts)
    kept, total = sum(p.kept for p in parts), sum(p.total for p in parts)
    ratio = s_new / s_old

    def map_a(m: torch.Tensor, sq: bool) -> torch.Tensor:
        return torch.cat([(ratio * p.p_b.T) ** (2 if sq else 1) @ m_e for p, m_e in zip(parts, m.reshape(experts, old, in_f))])

    def map_b(m: torch.Tensor, sq: bool) -> torch.Tensor:
        blocks = [m_e @ (ratio * p.p_a.T) ** (2 if sq else 1) for p, m_e in zip(parts, m.reshape(out_f, old, experts).unbind(-1))]
        return torch.stack(blocks, dim=-1).reshape(out_f, rank * experts)

    _replace(lin_a, new_a, optimizer, map_a)
    _replace(lin_b, new_b, optimizer, map_b)
    lin_a.out_features = lin_b.in_features = rank * experts
    layer.r[ADAPTER], layer.lora_alpha[ADAPTER], layer.scaling[ADAPTER] = rank, alpha, s_new
    return Resized(old_rank=old, new_rank=rank, energy_kept=kept / total if total else 1.0)


def resize_expert(layer: torch.nn.Module, index: int, old_rank: int, rank: int, alpha: float, *, use_rslora: bool,
                  optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None) -> Resized:
    """Give expert ``index`` of a fused tensor's LoRA ``rank`` components (the other experts unchanged).

    Past the tensor's rank the whole tensor grows first (:func:`resize`: zero-padded, every update
    unchanged). Then, as :func:`resize` does for a module, shrinking keeps the best rank-k approximation of
    the expert's update and growing adds fresh rows to A and zero columns to B; components past ``rank``
    are zeroed. The expert's optimizer moments restart from zero (they are not remapped per expert).
    """
    if rank > int(layer.r[ADAPTER]):
        resize(layer, rank, alpha, use_rslora=use_rslora, optimizer=optimizer, generator=generator)
    f, n = factors(layer), experts_of(layer)
    a = f["A"].detach().view(n, -1, f["A"].shape[-1])
    b = f["B"].detach().view(f["B"].shape[0], -1, n)
    if not 0 < rank <= min(a.shape[-1], b.shape[0]):
        raise InputError(f"cannot resize expert {index} of a {b.shape[0]}×{a.shape[-1]} tensor to rank {rank}: "
                         f"a rank must be between 1 and {min(a.shape[-1], b.shape[0])}", hint="lower the requested rank")
    part = _resized(a[index, :old_rank], b[:, :old_rank, index], rank, 1.0, generator)
    with torch.no_grad():
        a[index].zero_()
        b[:, :, index].zero_()
        a[index, :rank] = part.a.to(a.dtype)
        b[:, :rank, index] = part.b.to(b.dtype)
        for p, view in ((f["A"], lambda t: t.view(n, -1, t.shape[-1])[index]),
                        (f["B"], lambda t: t.view(t.shape[0], -1, n)[:, :, index])):
            for key, value in (optimizer.state.get(p, {}) if optimizer is not None else {}).items():
                if key in MOMENT_POWER and torch.is_tensor(value) and value.shape == p.shape:
                    view(value).zero_()
    return Resized(old_rank=old_rank, new_rank=rank, energy_kept=part.kept / part.total if part.total else 1.0)


def expert_slices(layer: torch.nn.Module, index: int, rank: int,
                  tensors: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of expert ``index``'s first ``rank`` components in a fused tensor's LoRA: A rows (rank × in)
    and B columns (out × rank); of ``tensors`` (e.g. the factors' gradients) laid out like the factors."""
    a, b = tensors if tensors is not None else (factors(layer)["A"], factors(layer)["B"])
    n = experts_of(layer)
    return a.view(n, -1, a.shape[-1])[index, :rank], b.view(b.shape[0], -1, n)[:, :rank, index]


@torch.no_grad()
def drop_expert_update(layer: torch.nn.Module, index: int) -> None:
    """Zero expert ``index``'s columns of B: that expert computes its base function again."""
    b = factors(layer)["B"]
    b.view(b.shape[0], -1, experts_of(layer))[:, :, index].zero_()


def experts_of(layer: torch.nn.Module) -> int:
    """Experts sharing one LoRA layer: a fused 3-D parameter target's expert count, else 1."""
    return int(getattr(layer, "num_experts", 1)) if hasattr(layer, "get_param") else 1


def expert_factors(a: torch.Tensor, b: torch.Tensor, experts: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each expert's ``(A_e, B_e)`` in peft's fused layout: A rows expert-major (``[E, r, in]``), B columns
    rank-major (``[out, r, E]``). One expert: the factors themselves."""
    return list(a.reshape(experts, -1, a.shape[-1])), list(b.reshape(b.shape[0], -1, experts).unbind(-1))


@dataclass(frozen=True)
class _Factors:
    """One expert's resized factors, the maps of its old factors onto them, and the update's energy."""

    a: torch.Tensor
    b: torch.Tensor
    p_a: torch.Tensor
    p_b: torch.Tensor
    kept: float
    total: float


def _resized(a: torch.Tensor, b: torch.Tensor, rank: int, c: float, generator: torch.Generator | None) -> _Factors:
    """The rank-``rank`` factors of one LoRA ``B·A`` (both scaled by ``c``): see :func:`resize`."""
    old, (out_f, in_f) = a.shape[0], (b.shape[0], a.shape[1])
    eye = c * torch.eye(rank, old, dtype=torch.float64, device=a.device)
    if rank >= old:
        energy = float(((b.double() @ a.double()) ** 2).sum())
        new_a = torch.cat([c * a.double(), _fresh_rows(rank - old, in_f, generator).to(a.device)])
        new_b = torch.cat([c * b.double(), b.new_zeros(out_f, rank - old, dtype=torch.float64)], dim=1)
        return _Factors(new_a, new_b, eye, eye.T, energy, energy)
    u, s, vh = factored_svd(b, a)
    total = float((s ** 2).sum())
    if total == 0.0:  # B = 0 (fresh or parked LoRA): keep the first rows of A, which still learn
        return _Factors(eye @ a.double(), b.double() @ eye.T, eye, eye.T, 0.0, 0.0)
    root = s[:rank].sqrt()
    live = root > root[0] * 1e-6
    inv = torch.where(live, 1 / root, torch.zeros_like(root))
    new_b, new_a = c * u[:, :rank] * root * live, c * root[:, None] * vh[:rank]
    new_a[~live] = _fresh_rows(int((~live).sum()), in_f, generator).to(a.device)
    p_a = c * (u[:, :rank] * inv).T @ b.double()
    p_b = c * a.double() @ (vh[:rank].T * inv)
    return _Factors(new_a, new_b, p_a, p_b, float((s[:rank] ** 2).sum()), total)


def _fresh_rows(n: int, in_f: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` new rows of A, drawn like peft's kaiming-uniform(a=√5) init: U(-1/√in, 1/√in)."""
    return (torch.rand(n, in_f, generator=generator, dtype=torch.float64) * 2 - 1) / math.sqrt(in_f)


MOMENT_POWER = {"exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2}  # AdamW state: first / second moments


def _replace(linear: torch.nn.Linear, value: torch.Tensor, optimizer: torch.optim.Optimizer | None, mapping) -> None:
    """Give ``linear`` a new weight Parameter holding ``value``; move its optimizer state and group slot.

    AdamW's moments of the old weight are mapped into the new basis (second moments by the squared
    map, see :func:`resize`); a parameter-shaped state this module does not know is refused rather
    than silently reset. A new Parameter, not a ``.data`` swap: autograd caches a leaf's shape.
    """
    old = linear.weight
    new = torch.nn.Parameter(value.to(old.dtype).contiguous(), requires_grad=old.requires_grad)
    state = optimizer.state.get(old, {}) if optimizer is not None else {}
    unknown = [k for k, v in state.items() if torch.is_tensor(v) and v.shape == old.shape and k not in MOMENT_POWER]
    if unknown:
        raise InputError(f"cannot resize a LoRA under this optimizer: its state {unknown} has no known mapping",
                         hint="resizing supports AdamW (the trainer's optimizer)")
    linear.weight = new
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state:
        optimizer.state[new] = {k: mapping(v.double(), MOMENT_POWER[k] == 2).to(v.dtype).contiguous()
                                if k in MOMENT_POWER and v.shape == old.shape else v for k, v in state.items()}


def tie_groups(model: torch.nn.Module, plan: AdapterPlan) -> None:
    """Point every group member's factors at its first member's parameters (idempotent).

    The optimizer and checkpoints then see each shared factor once, and autograd sums the members'
    gradients into it. Stock peft's ``save_pretrained`` clones aliased tensors, so a saved adapter
    is a stock one in which each member carries its group's values.
    """
    layers = lora_layers(model)
    check_groups(plan, layers)
    for members in plan.groups().values():
        if plan.modules[members[0]].kind == "expert":
            continue  # experts are tied by experts.ExpertSteps (their factors are slices of one tensor)
        head = factors(layers[members[0]])
        for name in members[1:]:
            layer = layers[name]
            if factors(layer)["A"] is not head["A"]:
                layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight = head["A"], head["B"]


def check_groups(plan: AdapterPlan, layers: dict[str, torch.nn.Module]) -> None:
    """Every group's members are linear modules carrying a LoRA with identical shapes, rank and alpha;
    else InputError."""
    for gid, members in plan.groups().items():
        fused = [m for m in members if plan.modules[m].kind == "expert"]
        if fused and len(fused) < len(members):
            raise InputError(f"group {gid} mixes MoE experts ({fused[0]}) and linear modules: their LoRA factors "
                             "are held differently (slices of a fused tensor's LoRA vs a layer's own)",
                             hint="group experts with experts and modules with modules")
        missing = [m for m in members if m not in layers and not (
            m in fused and split(m)[0] in layers and carries_lora(plan, plan.modules[m]))]
        if missing:
            raise InputError(f"group {gid}: {', '.join(missing)} carry no LoRA layer in the model",
                             hint="only modules the plan adapts (active, rank > 0) can share a LoRA")
        entries = [plan.modules[m] for m in members]
        kinds = {(e.shape, e.rank, e.alpha) for e in entries}
        shapes = {tuple(p.shape for p in factors(layers[m]).values()) for m in members} if not fused else {()}
        if len(kinds) > 1 or len(shapes) > 1:
            detail = ", ".join(f"{e.name} ({e.shape[0]}×{e.shape[1]}, r{e.rank}, alpha {e.alpha:g})" for e in entries)
            raise InputError(f"group {gid} would mix shapes or LoRA hyper-parameters: {detail}",
                             hint="a group may only hold modules of one weight shape, rank and alpha; "
                                  "fix the group ids in the plan or re-run the calibration")


def untie(layer: torch.nn.Module) -> None:
    """Give one member its own copies of its current factor values (new parameters, no optimizer state)."""
    for lin in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]):
        p = lin.weight
        lin.weight = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)


@torch.no_grad()
def start_from_mean(layers: list[torch.nn.Module]) -> None:
    """Set the first layer's factors to the best rank-r approximation of the members' mean update.

    With ``D = mean_i(B_i A_i)`` and ``D = U S Vᵀ``: ``A = V_rᵀ`` (orthonormal rows, so gradients keep
    flowing even where ``S`` is zero) and ``B = U_r S_r``.
    """
    head = factors(layers[0])
    mean = sum(f["B"].double() @ f["A"].double() for f in map(factors, layers)) / len(layers)
    u, s, vh = torch.linalg.svd(mean, full_matrices=False)
    r = head["A"].shape[0]
    head["A"].copy_(vh[:r].to(head["A"].dtype))
    head["B"].copy_((u[:, :r] * s[:r]).to(head["B"].dtype))


def is_float_base(layer: torch.nn.Module) -> bool:
    """True when the layer's base weight is a plain float tensor (merging into it is exact)."""
    from transformers.pytorch_utils import Conv1D

    base = layer.get_base_layer()
    weight = layer.get_param() if hasattr(layer, "get_param") else getattr(base, "weight", None)
    return ((hasattr(layer, "get_param") or isinstance(base, (torch.nn.Linear, Conv1D)))
            and type(weight) is torch.nn.Parameter and weight.dtype.is_floating_point
            and not hasattr(weight, "quant_state"))


def merge_into_base(layer: torch.nn.Module) -> bool:
    """Merge the update into a float base weight (exact); False (nothing done) on a quantized base."""
    if not is_float_base(layer):
        return False
    layer.merge(adapter_names=[ADAPTER])
    return True


@torch.no_grad()
def drop_update(layer: torch.nn.Module) -> None:
    """Zero B: the module computes its base function again (A keeps its values)."""
    factors(layer)["B"].zero_()


# ----- gradient probes of experts ---------------------------------------------------------------------
@contextlib.contextmanager
def expert_probes(layers: dict[str, torch.nn.Module], dim: int,
                  projection: Callable[[int], torch.Tensor]) -> Iterator[Callable[[], dict[str, torch.Tensor]]]:
    """While active, the LoRA of every fused expert tensor in ``layers`` carries ``dim`` more components
    per expert: A rows ``projection(in)ᵀ`` (the same for every expert), B columns zero, so the model
    computes exactly what it did. The function yielded reads, per tensor, ``[experts, out, dim]``: each
    expert's dense-weight gradient times the projection (``G_e·R``, from the gradient of those B columns,
    divided by the LoRA scale; peft's out/in of the tensor). The original factors are put back after."""
    saved = {name: (layer, factors(layer)) for name, layer in layers.items()}
    for layer, f in saved.values():
        n, (a, b) = experts_of(layer), (f["A"].detach(), f["B"].detach())
        r, probe = a.shape[0] // n, projection(a.shape[-1]).T.to(a.device, a.dtype)
        new_a = torch.cat([a.view(n, r, -1), probe.expand(n, -1, -1)], dim=1).reshape(n * (r + dim), -1)
        new_b = torch.cat([b.view(b.shape[0], r, n), b.new_zeros(b.shape[0], dim, n)], dim=1).reshape(b.shape[0], -1)
        layer.lora_A[ADAPTER].weight = torch.nn.Parameter(new_a, requires_grad=False)
        layer.lora_B[ADAPTER].weight = torch.nn.Parameter(new_b, requires_grad=True)

    def read() -> dict[str, torch.Tensor]:
        out = {}
        for name, (layer, f) in saved.items():
            n, grad = experts_of(layer), layer.lora_B[ADAPTER].weight.grad
            r = f["A"].shape[0] // n
            if grad is not None:
                out[name] = grad.view(grad.shape[0], r + dim, n)[:, r:].permute(2, 0, 1).float() / scaling(layer)
        return out

    try:
        yield read
    finally:
        for layer, f in saved.values():
            layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight = f["A"], f["B"]


# ----- member gradients of tied factors -----------------------------------------------------------------
class MemberGradients:
    """Hooks on each group member's ``lora_A``/``lora_B`` capture its own gradient of the shared factors
    (``g_i = ∂L/∂θ`` through member i alone), only inside :meth:`capturing`."""

    def __init__(self) -> None:
        self.grads: dict[tuple[str, str], torch.Tensor] = {}
        self._hooked: frozenset[str] = frozenset()
        self._handles: list[Any] = []
        self._on = False

    def attach(self, model: torch.nn.Module, plan: AdapterPlan) -> None:
        """(Re)hook exactly the members of the plan's groups of linear modules (an expert's own gradient is
        its slice of the tensor's gradient: :meth:`spectra_core.experts.ExpertSteps.group_gradients`)."""
        members = frozenset(m for ms in plan.groups().values() for m in ms if plan.modules[m].kind == "module")
        if members == self._hooked:
            return
        self.detach()
        layers = lora_layers(model)
        for name in sorted(members):
            for f, lin in (("A", layers[name].lora_A[ADAPTER]), ("B", layers[name].lora_B[ADAPTER])):
                self._handles.append(lin.register_forward_hook(self._hook(name, f)))
        self._hooked = members

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._hooked = [], frozenset()
        self.grads.clear()

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        self._on = True
        try:
            yield
        finally:
            self._on = False

    def take(self, members: list[str]) -> dict[str, dict[str, torch.Tensor]] | None:
        """Each member's captured factor gradients, or None when one was not captured."""
        found = {m: {f: self.grads.get((m, f)) for f in FACTORS} for m in members}
        if any(g is None for per in found.values() for g in per.values()):
            return None
        return found  # type: ignore[return-value]

    def _hook(self, name: str, which: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if not (self._on and torch.is_grad_enabled() and output.requires_grad):
                return
            x = args[0]

            def on_grad(grad: torch.Tensor) -> None:
                g = grad.reshape(-1, grad.shape[-1]).float().T @ x.detach().reshape(-1, x.shape[-1]).float()
                key = (name, which)
                self.grads[key] = g if key not in self.grads else self.grads[key] + g

            output.register_hook(on_grad)

        return hook


# ----- the quantized base -----------------------------------------------------------------------------
def prepare_for_kbit_training(model: torch.nn.Module) -> torch.nn.Module:
    """peft's ``prepare_model_for_kbit_training`` without its gradient checkpointing (the trainer enables
    non-reentrant checkpointing itself when ``training.gradient_checkpointing`` is set, so frozen
    layers below the lowest adapter need no input gradients)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


# ----- data- and quantization-aware init (the plan's ``init``) --------------------------------------------
def eva_config(fields: dict[str, Any]) -> Any:
    """peft's ``EvaConfig`` from a plan's ``init.eva`` fields (peft validates them: unknown fields, rho < 1)."""
    from peft import EvaConfig

    return EvaConfig(**fields)


def init_config_kwargs(plan: AdapterPlan) -> dict[str, Any]:
    """Extra ``LoraConfig`` fields for the plan's init (EVA is chosen when the config is made)."""
    if plan.init.name != "eva":
        return {}
    return {"init_lora_weights": "eva", "eva_config": eva_config(plan.init.eva)}


def initialize_eva(model: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, tuple[int, float]]:
    """peft's EVA on ``batches``; returns the rank and alpha EVA gave each plan module (0 when it removed one)."""
    from peft import initialize_lora_eva_weights

    initialize_lora_eva_weights(model, dataloader=batches, adapter_name=ADAPTER, show_progress_bar=False)
    return {name: (layer.r[ADAPTER], float(layer.lora_alpha[ADAPTER])) for name, layer in lora_layers(model).items()}


def initialize_loftq(model: Any, originals: Callable[[list[str]], Iterator[tuple[str, torch.Tensor]]],
                     model_path: str) -> None:
    """Every LoRA starts as LoftQ's correction of its bitsandbytes 4-bit base weight: peft's
    ``replace_lora_weights_loftq`` on CUDA/XPU (peft 0.21 hard-codes the device), else the same single
    LoftQ step on the CPU from ``originals(names)`` (the float weights): the rank-r truncated SVD of
    original − dequantized, A = √S·Vᵀ, B = U·√S."""
    from peft.tuners.lora import Linear4bit

    layers = lora_layers(model)
    not_4bit = [name for name, layer in layers.items() if not isinstance(layer, Linear4bit)]
    if not_4bit:
        raise ConfigError(f"LoftQ init corrects bitsandbytes 4-bit quantization, but {not_4bit[0]} "
                         f"({len(not_4bit)} modules) is not a 4-bit layer",
                          hint="use quantizer: {name: bnb-nf4}; layers it keeps in float (`spectra plan` names "
                               "them, e.g. T5's wo) go in targets.exclude")
    if next(iter(layers.values())).get_base_layer().weight.device.type in ("cuda", "xpu"):
        from peft import replace_lora_weights_loftq

        replace_lora_weights_loftq(model, model_path=model_path, adapter_name=ADAPTER)
        return
    with torch.no_grad():
        for name, original in originals(list(layers)):
            layer = layers[name]
            u, s, vh = torch.linalg.svd(original.float() - base_weight(layer), full_matrices=False)
            r = layer.r[ADAPTER]
            root = s[:r].sqrt()
            a, b = factors(layer)["A"], factors(layer)["B"]
            a.data = (root[:, None] * vh[:r]).to(a.dtype)
            b.data = (u[:, :r] * root).to(b.dtype)


# ----- reading adapter configs, and peft's own selectors (for baseline strategies) ---------------------------
def pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """A ``rank_pattern``/``alpha_pattern`` entry for ``module``, matched as peft matches it, else ``default``."""
    from peft.utils.other import get_pattern_key

    return pattern.get(get_pattern_key(pattern.keys(), module), default) if pattern else default


def peft_matches(names: list[str], **config: Any) -> list[str]:
    """The module names peft's own matching adapts under ``LoraConfig(**config)`` (``target_modules``,
    ``layers_to_transform``, ``layers_pattern``, ...)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    lora_config_ = LoraConfig(**config)
    return [n for n in names if check_target_module_exists(lora_config_, n)]


def kappatune_order(weights: list[tuple[str, torch.Tensor]], max_dim_size_to_analyze: int) -> list[str]:
    """peft KappaTune's order of the named 2-D ``weights`` (best-conditioned first; larger ones left out).
    The weights are placed, under their own names, in a module tree of ``nn.Linear`` shells (no copy)."""
    from peft.helpers import KappaTuneSelector

    root = torch.nn.Module()
    for name, w in weights:
        *parents, leaf = name.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        linear.weight = torch.nn.Parameter(w.float(), requires_grad=False)
        node.add_module(leaf, linear)
    selector = KappaTuneSelector(root, max_dim_size_to_analyze=max_dim_size_to_analyze, show_progress=False)
    return list(selector.get_best_targets())
