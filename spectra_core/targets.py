"""What of a model can carry a LoRA: every weight is put in a *family* (its module type and layer kind),
and each family is adapted, or skipped with the reason. ``spectra plan`` prints the families, so no part
of a model is left unadapted silently.

Adapted: ``nn.Linear`` (and subclasses), GPT-2's ``Conv1D`` (peft ``fan_in_fan_out``) and fused 3-D MoE
expert parameters (peft ``target_parameters``, one LoRA per expert). Skipped: routers and 1×H gates,
embeddings, norms and biases, the targets config's exclusions, and layers peft cannot adapt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .automodel import model_class
from .config import TargetsConfig
from .errors import ConfigError, InputError
from .spectral.types import module_type
from .strategies import TargetModule

if TYPE_CHECKING:
    import torch

ROUTER = "router: the expert-choice weights stay frozen (adapting them shifts the load balance between experts)"
GATE = "1×H gate: a weight with one output row has no low-rank structure to adapt; kept frozen"
EMBEDDING = "embedding: spectra adapts linear layers, not embeddings"
RELATIVE_BIAS = ("relative position bias: a table of per-head biases over position buckets (T5), not a linear map; "
                 "kept frozen")
NORM_BIAS = "norms and biases: not LoRA targets"
EXCLUDED = "excluded by targets.exclude"
HEAD = "output head: frozen by default (targets.exclude replaces the default ['lm_head'] to adapt it)"
NOT_INCLUDED = "not matched by targets.include"
UNSUPPORTED = "unsupported layer, not adapted"


@dataclass
class Family:
    """Weights of one module type and layer kind, with what happens to them."""

    type: str
    layer: str
    adapted: bool
    reason: str = ""
    names: list[str] = field(default_factory=list)
    params: int = 0


@dataclass
class Survey:
    """The targets of a model plus every family of its weights (adapted or skipped with the reason)."""

    targets: list[TargetModule]
    families: list[Family]
    total_params: int
    adapted_params: int
    model: Any = None  # the surveyed model (on the meta device when built by models.survey_model)

    def adaptable_fraction(self) -> float:
        """Share of the model's parameters (each tied tensor once) that sit in adapted families."""
        return self.adapted_params / self.total_params if self.total_params else 0.0

    def unsupported(self) -> list[Family]:
        """Families of 2-D+ weights no adapter here can reach (custom layers)."""
        return [f for f in self.families if f.reason.startswith(UNSUPPORTED)]

    def rows(self) -> list[dict[str, Any]]:
        return [{"type": f.type, "layer": f.layer, "count": len(f.names), "params": f.params,
                 "status": "adapted" if f.adapted else "skipped", "reason": f.reason} for f in self.families]


def meta_model(config: Any, *, trust_remote_code: bool = False) -> torch.nn.Module:
    """The model of ``config`` built on the meta device (no weights are allocated or read)."""
    import torch

    cls = model_class(config)
    with torch.device("meta"):
        return cls.from_config(config, trust_remote_code=trust_remote_code)


def _layer_kind(module: torch.nn.Module, param: str, ndim: int, shape: tuple[int, ...],
                router: bool) -> tuple[str, str | None]:
    """(layer label, reason it is skipped or None when it is a LoRA target) of one weight tensor;
    ``router``: the module sits next to an MoE block's experts under the name ``gate``/``router``."""
    import torch
    from transformers.pytorch_utils import Conv1D

    cls = type(module).__name__
    if ndim < 2:
        return "norm/bias", NORM_BIAS
    if isinstance(module, torch.nn.Embedding):
        return cls, EMBEDDING
    if router or "router" in cls.lower():
        return cls, ROUTER
    if param == "weight" and isinstance(module, torch.nn.Linear):
        return (cls, GATE) if module.out_features == 1 else (cls, None)
    if param == "weight" and isinstance(module, Conv1D):
        return "Conv1D", (GATE if shape[1] == 1 else None)
    if ndim == 3:
        return f"{cls} (fused experts)", None
    return cls, f"{UNSUPPORTED}: {cls}.{param} is not nn.Linear, Conv1D or a 3-D expert tensor"


def survey(model: torch.nn.Module, targets: TargetsConfig) -> Survey:
    """Sort every parameter of ``model`` (a meta model is enough) into families; targets in model order."""
    from transformers.pytorch_utils import Conv1D

    include = [re.compile(p) for p in targets.include] if targets.include else None
    exclude = [re.compile(p) for p in targets.exclude]
    modules = dict(model.named_modules())
    head = model.get_output_embeddings() if "exclude" not in targets.model_fields_set else None
    families: dict[tuple[str, str, str], Family] = {}
    found: list[TargetModule] = []
    first_name: dict[int, str] = {}  # tensor id -> the first module holding it (tied tensors count once)
    total = adapted = 0
    for pname, param in model.named_parameters(remove_duplicate=False):  # a tied head is a module of its own
        owner_name, _, attr = pname.rpartition(".")
        new = id(param) not in first_name
        first_name.setdefault(id(param), owner_name)
        total += param.numel() if new else 0
        owner = modules[owner_name]
        shape = tuple(param.shape)
        parent, _, last = owner_name.rpartition(".")
        router = last in ("gate", "router") and f"{parent}.experts" in modules
        layer, reason = _layer_kind(owner, attr, param.ndim, shape, router)
        if reason == EMBEDDING and last == "relative_attention_bias":
            reason = RELATIVE_BIAS
        kind = "parameter" if param.ndim == 3 else "module"
        name = owner_name if kind == "module" else pname
        if reason is None and include is not None and not any(p.search(name) for p in include):
            reason = NOT_INCLUDED
        if reason is None and any(p.search(name) for p in exclude):
            reason = EXCLUDED
        if reason is None and owner is head:  # named embed_out, output_layer, ... in some models
            reason = HEAD
        if reason is not None and reason != NORM_BIAS and not new:
            reason = f"tied to {first_name[id(param)]}; {reason}"
        mtype = module_type(name) if reason != NORM_BIAS else "(norms, biases)"
        family = families.setdefault((mtype, layer, reason or ""),
                                     Family(type=mtype, layer=layer, adapted=reason is None, reason=reason or ""))
        family.names.append(name)
        family.params += param.numel()
        if reason is not None:
            continue
        adapted += param.numel() if new else 0
        if kind == "parameter":
            experts, out_f, in_f = _expert_shape(owner, shape)
            found.append(TargetModule(name=name, type=mtype, out_features=out_f, in_features=in_f,
                                      kind="parameter", experts=experts))
        elif isinstance(owner, Conv1D):
            found.append(TargetModule(name=name, type=mtype, out_features=shape[1], in_features=shape[0],
                                      fan_in_fan_out=True))
        else:
            found.append(TargetModule(name=name, type=mtype, out_features=owner.out_features,
                                      in_features=owner.in_features))
    return Survey(targets=found, families=list(families.values()), total_params=total, adapted_params=adapted,
                  model=model)


def _expert_shape(owner: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(experts, out, in) of a fused expert tensor; ``is_transposed`` experts store ``[E, in, out]`` (as peft reads it)."""
    experts, a, b = shape
    return (experts, b, a) if getattr(owner, "is_transposed", False) else (experts, a, b)


def check_found(survey_: Survey, targets: TargetsConfig, where: Any) -> None:
    """Refuse a survey without targets, naming what the model's weights are."""
    if survey_.targets:
        return
    kinds = sorted({f"{f.layer} ({f.reason})" if f.reason else f.layer for f in survey_.families})
    raise InputError(f"no weight of {where} is a LoRA target for targets include={targets.include} "
                     f"exclude={targets.exclude}; its layers: {'; '.join(kinds)}",
                     hint="widen targets.include (regexes over module names); `spectra plan` lists every family")


def plan_targets(targets: list[TargetModule]) -> list[TargetModule]:
    """What allocators see: ``targets`` with every fused expert tensor split into one ``expert`` target per
    expert (``{tensor}.{i}``, the name a scan gives its slice), so experts are selected and ranked like
    linear modules (see :mod:`spectra_core.experts`)."""
    out = []
    for t in targets:
        if t.experts is None:
            out.append(t)
            continue
        out += [t.model_copy(update={"name": f"{t.name}.{i}", "kind": "expert", "experts": None})
                for i in range(t.experts)]
    return out


def fit_plan(plan: Any, targets: list[TargetModule]) -> Any:
    """``plan`` with each expert entry marked ``kind: expert`` (allocators see every target as one
    ``out × in`` weight); EVA and LoftQ do not initialise expert LoRA (ConfigError)."""
    for t in targets:
        entry = plan.modules.get(t.name)
        if entry is not None and t.kind == "expert":
            entry.kind = "expert"
    experts = [m.name for m in plan.injected() if m.kind == "expert"]
    if experts and plan.init.name != "default":
        raise ConfigError(f"lora_init {plan.init.name!r} does not initialise fused MoE expert tensors ({len(experts)} "
                          f"experts in the plan, e.g. {experts[0]}): peft's {plan.init.name} works on linear layers",
                          hint="use lora_init: {name: default}, or leave the experts out (targets.exclude: ['experts'])")
    return plan
