"""The adapter plan: per target module, whether it trains, its rank, alpha, LR scale and group.

The plan is the contract between allocation, training, rebalancing and export. It is plain data:
saved as JSON, printed as a table, diffed between versions, and its ``history`` records every change
a gradient merger or rebalancer made, with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .atomic import write_text
from .errors import ConfigError, InputError

PLAN_SCHEMA_VERSION = 1


class ModulePlan(BaseModel):
    """What happens to one target: a linear layer peft can adapt, or one expert of a fused MoE tensor."""

    model_config = ConfigDict(extra="forbid")

    name: str
    type: str
    kind: Literal["module", "expert"] = Field(
        default="module", description="module: a linear layer (peft target_modules); expert: expert i of a fused "
        "3-D MoE tensor, named {tensor}.{i} (its share of the tensor's peft target_parameters LoRA).")
    shape: tuple[int, int] = Field(description="(out_features, in_features) of the base weight (of the expert's slice).")
    active: bool = Field(description="True: its LoRA trains. False: frozen (no LoRA, or a frozen one).")
    rank: int = Field(ge=0)
    alpha: float = Field(ge=0)
    lr_scale: float = Field(default=1.0, ge=0)
    tier: str | None = None
    group: str | None = Field(default=None, description="Modules with the same group share one LoRA.")
    score: float | None = None

    def lora_params(self) -> int:
        """Trainable parameters of this module's own LoRA (A: r×in, B: out×r)."""
        return self.rank * (self.shape[0] + self.shape[1]) if self.active else 0


class LoraInit(BaseModel):
    """How the LoRA weights start, applied by core when the model is built (not on resume: the
    checkpoint holds every LoRA weight). An allocator option (``lora_init``) copied into the plan.

    * ``default``: peft's default (A random, B = 0).
    * ``eva``: peft's EVA (``init_lora_weights="eva"`` + ``initialize_lora_eva_weights``): A from the
      SVD of each module's input activations on the first ``batches`` training batches; ranks are
      redistributed by explained variance (``eva.rho`` > 1) and the plan records the new ranks.
    * ``loftq``: peft's LoftQ (``replace_lora_weights_loftq``) on a bitsandbytes 4-bit base: every
      injected LoRA (frozen ones too) starts as the rank-r SVD of (original − dequantized) weight, read
      from the original safetensors, so the quantization error is corrected. Needs scaling 1
      (alpha = rank, or alpha = √rank with rsLoRA), since peft writes the correction unscaled.
    """

    model_config = ConfigDict(extra="forbid")

    name: Literal["default", "eva", "loftq"] = "default"
    batches: int = Field(default=8, gt=0, description="eva: training batches whose activations are decomposed.")
    eva: dict[str, Any] = Field(default_factory=dict, description="eva: peft EvaConfig fields (rho, tau, whiten, "
                                                                  "use_label_mask, adjust_scaling_factors).")

    @model_validator(mode="after")
    def _eva_fields(self) -> LoraInit:
        if self.eva:
            if self.name != "eva":
                raise ValueError(f"eva options are given but the init is {self.name!r}")
            from .adapters import eva_config

            eva_config(self.eva)  # peft's own validation: unknown fields, rho < 1, ...
        return self


class PlanChange(BaseModel):
    """One recorded change to a module's plan entry (the history; strategies propose changes with
    :mod:`spectra_core.changes` and the core records these)."""

    model_config = ConfigDict(extra="forbid")

    step: int
    strategy: str
    module: str
    field: str
    before: Any
    after: Any
    reason: str


class AdapterPlan(BaseModel):
    """Per-module adaptation decisions plus their history."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = PLAN_SCHEMA_VERSION
    method: str | None = None
    allocator: str
    mode: Literal["targeted", "all-inactive"] = Field(
        default="targeted",
        description="targeted: LoRA only on active modules. all-inactive: LoRA on every target, "
        "inactive ones frozen, so activation can change without rebuilding the model.",
    )
    use_rslora: bool = Field(default=False, description="Scale updates by alpha/sqrt(r) instead of alpha/r.")
    init: LoraInit = Field(default_factory=LoraInit, description="How the LoRA weights start.")
    modules: dict[str, ModulePlan]
    history: list[PlanChange] = Field(default_factory=list)

    # ----- views -------------------------------------------------------------------------------
    def active(self) -> list[ModulePlan]:
        return [m for m in self.modules.values() if m.active]

    def injected(self) -> list[ModulePlan]:
        """Modules that carry a LoRA layer in the model."""
        if self.mode == "all-inactive":
            return [m for m in self.modules.values() if m.rank > 0]
        return [m for m in self.modules.values() if m.active and m.rank > 0]

    def trainable_parameters(self) -> int:
        """LoRA parameters the optimizer sees; a group's shared LoRA counts once."""
        seen: set[str] = set()
        total = 0
        for m in self.active():
            if m.group is not None:
                if m.group in seen:
                    continue
                seen.add(m.group)
            total += m.lora_params()
        return total

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for m in self.modules.values():
            if m.group is not None:
                out.setdefault(m.group, []).append(m.name)
        return out

    # ----- changes -----------------------------------------------------------------------------
    def update(self, module: str, *, step: int, strategy: str, reason: str, **fields: Any) -> None:
        """Change fields of one module and record each change in the history."""
        entry = self.modules[module]
        for key, value in fields.items():
            before = getattr(entry, key)
            if before == value:
                continue
            setattr(entry, key, value)
            self.history.append(PlanChange(step=step, strategy=strategy, module=module, field=key,
                                           before=before, after=value, reason=reason))

    def diff(self, other: AdapterPlan) -> list[str]:
        """Human-readable differences from ``self`` to ``other``, one line per changed field."""
        lines: list[str] = []
        for name in sorted(set(self.modules) | set(other.modules)):
            a, b = self.modules.get(name), other.modules.get(name)
            if a is None or b is None:
                lines.append(f"{'+' if a is None else '-'} {name}")
                continue
            for key in ("active", "rank", "alpha", "lr_scale", "tier", "group"):
                va, vb = getattr(a, key), getattr(b, key)
                if va != vb:
                    lines.append(f"~ {name}.{key}: {va!r} -> {vb!r}")
        return lines

    def check_init(self, *, tied: bool = False) -> None:
        """Raise ConfigError if ``init`` cannot work with this plan: LoftQ needs LoRA scaling 1; neither
        EVA nor LoftQ survives a gradient merger (``tied``), which gives a group one shared LoRA."""
        if self.init.name == "default":
            return
        if tied:
            raise ConfigError(f"lora_init {self.init.name!r} cannot be combined with a gradient merger: tying a "
                              "group to one shared LoRA would replace each member's own initial weights",
                              hint="drop gradient_merger, or use lora_init: {name: default}")
        if self.init.name != "loftq":
            return
        off = [m for m in self.injected() if m.alpha != (m.rank ** 0.5 if self.use_rslora else m.rank)]
        if off:
            m = off[0]
            raise ConfigError(f"LoftQ init needs LoRA scaling 1, but {m.name} has rank {m.rank}, alpha {m.alpha:g}"
                              f"{' (rsLoRA)' if self.use_rslora else ''} ({len(off)} such modules): peft writes "
                              "the quantization correction unscaled, so the LoRA would add it "
                              f"{m.alpha / (m.rank ** 0.5 if self.use_rslora else m.rank):g}×",
                              hint="set allocator.options.alpha equal to the rank (√rank with use_rslora)")

    # ----- files -------------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def save(self, path: Path) -> Path:
        return write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> AdapterPlan:
        path = Path(path)
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise InputError(f"plan file not found: {path}", hint="run `spectra plan CONFIG` first") from exc
        except (json.JSONDecodeError, ValueError) as exc:
            raise InputError(f"{path} is not a valid adapter plan: {exc}") from exc

    def table(self) -> list[dict[str, Any]]:
        """Rows for printing: one per module, in plan order."""
        return [
            {"module": m.name, "type": m.type, "active": m.active, "rank": m.rank, "alpha": m.alpha,
             "lr_scale": m.lr_scale, "tier": m.tier, "group": m.group, "score": m.score}
            for m in self.modules.values()
        ]

