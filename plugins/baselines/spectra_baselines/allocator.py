"""Allocator ``peft-targets``: the modules a plain ``peft.LoraConfig`` would adapt, one rank for all.

Which modules are adapted is decided by peft itself (``check_target_module_exists`` on a ``LoraConfig``,
through ``spectra_core.peft_matches``
with the given ``target_modules`` / ``layers_to_transform`` / ``layers_pattern``), so the arm is exactly
what a peft user gets from that config. Optionally only the global top fraction of the matched modules
by score trains (KappaTune's ``get_best_targets(top_p)`` rule, k = max(1, int(n·p))).
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from spectra_core import (AdapterPlan, Allocator, LoraInit, ModulePlan, Scores, StrategyOptions, TargetModule,
                          peft_matches)
from spectra_core.errors import ConfigError, InputError
from spectra_core.spectral.types import layer_count


class PeftTargets(Allocator):
    """LoRA of one rank on the modules peft's LoraConfig matching selects (uniform, q/v, last N layers)."""

    name = "peft-targets"

    class Options(StrategyOptions):
        target_modules: list[str] | None = Field(
            default=None, description="As LoraConfig.target_modules: module-name suffixes, e.g. [q_proj, v_proj] "
                                      "(peft's default for Llama). None: every target module.")
        layers_to_transform: list[int] | None = Field(
            default=None, description="As LoraConfig.layers_to_transform: only these layer indices.")
        last_layers: int | None = Field(
            default=None, gt=0, description="Only the last N layers (LLaMA-Factory's freeze style); sets "
                                            "layers_to_transform to them.")
        layers_pattern: str | None = Field(default=None, description="As LoraConfig.layers_pattern (e.g. 'layers').")
        top_fraction: float | None = Field(
            default=None, gt=0, le=1, description="Train only the global top fraction of the matched modules by "
                                                  "score (k = max(1, int(n·p)), KappaTune's top_p rule).")
        rank: int = Field(default=8, gt=0)
        alpha: float | None = Field(default=None, gt=0, description="LoRA alpha; default 2 × rank.")
        use_rslora: bool = False
        lr_scale: float = Field(default=1.0, gt=0)

        lora_init: LoraInit = Field(default_factory=LoraInit, description="How the LoRA weights start: "
                                    "default, eva (peft EVA from training data), loftq (peft LoftQ, 4-bit base).")
        @model_validator(mode="after")
        def _one_layer_rule(self):
            if self.last_layers is not None and self.layers_to_transform is not None:
                raise ValueError("give either last_layers or layers_to_transform, not both")
            return self

    def lora_config(self, targets: list[TargetModule]) -> dict:
        """The ``peft.LoraConfig`` fields whose target matching decides the adapted modules."""
        opts = self.options
        layers = opts.layers_to_transform
        if opts.last_layers is not None:
            depth = layer_count(t.name for t in targets)
            if opts.last_layers > depth:
                raise ConfigError(f"allocator.options.last_layers={opts.last_layers} exceeds the model's "
                                  f"{depth} layers", hint=f"use last_layers ≤ {depth}")
            layers = list(range(depth - opts.last_layers, depth))
        types = opts.target_modules or sorted({t.type for t in targets})
        return {"r": opts.rank, "target_modules": types, "layers_to_transform": layers,
                "layers_pattern": opts.layers_pattern}

    def allocate(self, scores: Scores, targets: list[TargetModule]) -> AdapterPlan:
        opts = self.options
        config = self.lora_config(targets)
        names = set(peft_matches([t.name for t in targets], **config))
        matched = [t for t in targets if t.name in names]
        if not matched:
            types = ", ".join(sorted({t.type.rsplit(".", 1)[-1] for t in targets}))
            raise InputError(f"peft matches none of the {len(targets)} target modules with target_modules="
                             f"{config['target_modules']}, layers_to_transform={config['layers_to_transform']}",
                             hint=f"module-name suffixes here: {types}")
        for t in matched:
            if opts.rank > min(t.in_features, t.out_features):
                raise ConfigError(f"allocator.options.rank={opts.rank} exceeds the smaller dimension of {t.name} "
                                  f"({t.out_features}×{t.in_features})",
                                  hint=f"use rank ≤ {min(t.in_features, t.out_features)}")
        by_name = scores.by_name()
        chosen = {t.name for t in matched}
        if opts.top_fraction is not None:
            chosen = self._top(matched, by_name)
        alpha = opts.alpha if opts.alpha is not None else 2.0 * opts.rank
        modules = {
            t.name: ModulePlan(name=t.name, type=t.type, shape=(t.out_features, t.in_features),
                               active=t.name in chosen, rank=opts.rank if t.name in chosen else 0, alpha=alpha,
                               lr_scale=opts.lr_scale,
                               score=by_name[t.name].score if t.name in by_name else None)
            for t in targets
        }
        return AdapterPlan(allocator=self.name, mode="targeted", use_rslora=opts.use_rslora,
                           modules=modules, init=opts.lora_init)

    def _top(self, matched: list[TargetModule], by_name: dict) -> set[str]:
        missing = [t.name for t in matched if t.name not in by_name]
        if missing:
            raise InputError(f"{len(missing)} target modules have no score (e.g. {missing[0]})",
                             hint="top_fraction selects by score: re-run the scan for this model")
        k = max(1, int(len(matched) * self.options.top_fraction))
        ranked = sorted(matched, key=lambda t: -math.inf if math.isnan(by_name[t.name].score)
                        else by_name[t.name].score, reverse=True)
        return {t.name for t in ranked[:k]}
