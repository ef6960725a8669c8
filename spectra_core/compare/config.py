"""The compare config (COMPARE.yaml): a base run config, named arms (run-config overlays), a budget.

    base: run.yaml            # a run config file (relative to this file) or an inline mapping
    reference: hybrid-25      # the arm every other arm is paired with, seed by seed
    split: {validation_fraction: 0.1, heldout_fraction: 0.06, order: tail}
    budget: {steps: 100, seeds: [0, 1, 2], learning_rates: [1e-3, 3e-3], tune_seeds: [0]}
    quick: {steps: 8, seeds: [0], learning_rates: [3e-3]}    # what --quick runs instead
    arms:
      hybrid-25: {method: hybrid, scorer: {name: spectrum}}
      uniform:   {allocator: {name: spectrum-top, options: {top_fraction: 1.0, rank: 8, alpha: 16}},
                  match: hybrid-25}          # rank solved to hybrid-25's trainable parameters (±5 %)

An arm is a mapping, an overlay file (``arm: arms/x.yaml``) or both (``{file: arms/x.yaml, match: uniform}``,
the mapping's keys over the file's). Its keys are run-config sections merged over the base (a section
naming another strategy replaces the base's section), plus ``match`` (an arm name or a parameter count) and ``solve`` (the
option solved for it; default the allocator's ``rank``, else ``top_fraction``). A string value
``${seed}`` anywhere in an arm becomes the cell's seed (e.g. a random scorer that follows the seed).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import _merge_section, read_yaml
from ..errors import ConfigError

SEED_PLACEHOLDER = "${seed}"


@dataclass(frozen=True)
class Cell:
    """One training run of a compare: an arm at one learning rate and seed."""

    arm: str
    lr: float
    seed: int

    @property
    def label(self) -> str:
        return f"{self.arm}/lr{self.lr:g}/seed{self.seed}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Strict):
    """How the data is cut: held-out (reported) and validation (LR choice) never overlap the training part."""

    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5,
                                       description="Part of the TRAINING records the LR is chosen on.")
    heldout_fraction: float | None = Field(default=None, gt=0, lt=0.5, description=(
        "Part of data.path held out for the reported loss (default: the base's data.validation_fraction); "
        "ignored when the base sets data.validation_path, which is then the held-out set."))
    order: Literal["tail", "random"] = Field(default="tail", description=(
        "tail: held-out = the last records, validation = the ones before (no text shared across a cut); "
        "random: a seeded shuffle."))
    seed: int = 0


class BudgetConfig(_Strict):
    steps: int = Field(default=100, gt=0)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    learning_rates: list[float] = Field(default_factory=lambda: [1e-3, 3e-3, 1e-2], min_length=1)
    tune_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                                  description="Seeds the LR grid runs on (a subset of seeds; their runs are reused).")
    eval_batches: int | None = Field(default=None, gt=0, description="Held-out/validation batches evaluated.")

    @model_validator(mode="after")
    def _tune_within_seeds(self) -> BudgetConfig:
        extra = [s for s in self.tune_seeds if s not in self.seeds]
        if extra:
            raise ValueError(f"tune_seeds {extra} are not in seeds {self.seeds}")
        if any(lr <= 0 for lr in self.learning_rates):
            raise ValueError("learning_rates must be positive")
        return self


class Arm(BaseModel):
    """One arm: run-config overlay keys plus ``match``/``solve``."""

    model_config = ConfigDict(extra="allow")
    match: str | int | None = Field(default=None, description="An arm name or a trainable-parameter count.")
    solve: str | None = Field(default=None, description="Dotted option path solved for match, "
                              "e.g. allocator.options.rank or allocator.options.top_fraction.")
    tolerance: float = Field(default=0.05, gt=0, lt=1, description="Allowed relative parameter difference.")

    def overlay(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.model_extra or {}))


class CompareConfig(_Strict):
    base: dict[str, Any]
    arms: dict[str, Arm] = Field(min_length=1)
    reference: str | None = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    quick: dict[str, Any] | None = Field(default=None, description="Budget keys --quick replaces.")
    output_dir: str = "runs/compare"
    threads: int = Field(default=1, gt=0, description="Torch threads per cell subprocess.")

    @field_validator("arms")
    @classmethod
    def _names(cls, arms: dict[str, Arm]) -> dict[str, Arm]:
        for name in arms:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"arm name {name!r} must be a plain name (no '/')")
        return arms

    @model_validator(mode="after")
    def _references(self) -> CompareConfig:
        if self.reference is not None and self.reference not in self.arms:
            raise ValueError(f"reference {self.reference!r} is not an arm; arms: {', '.join(self.arms)}")
        for name, arm in self.arms.items():
            if isinstance(arm.match, str) and arm.match not in self.arms:
                raise ValueError(f"arm {name}: match {arm.match!r} is not an arm; arms: {', '.join(self.arms)}")
            if arm.match == name:
                raise ValueError(f"arm {name} cannot match itself")
        return self

    def with_quick(self) -> CompareConfig:
        """This config with the ``quick`` budget (an error when it has none)."""
        if not self.quick:
            raise ConfigError("--quick needs a `quick:` section in the compare config",
                              hint="add e.g. quick: {steps: 8, seeds: [0], learning_rates: [3.0e-3]}")
        budget = {**self.budget.model_dump(), **self.quick}
        budget["tune_seeds"] = [s for s in budget["tune_seeds"] if s in budget["seeds"]] or budget["seeds"][:1]
        return self.model_copy(update={"budget": BudgetConfig.model_validate(budget)})

    def arm_config(self, name: str, seed: int) -> dict[str, Any]:
        """The base run config with arm ``name``'s overlay merged in and ``${seed}`` filled (no budget yet)."""
        return substitute_seed(merge_overlay(self.base, self.arms[name].overlay()), seed)


def merge_overlay(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay``'s sections over ``base`` (a section naming another strategy replaces the base's)."""
    return _merge_section(copy.deepcopy(base), overlay)


def substitute_seed(data: Any, seed: int) -> Any:
    if isinstance(data, dict):
        return {k: substitute_seed(v, seed) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute_seed(v, seed) for v in data]
    return seed if data == SEED_PLACEHOLDER else data


def _arm_with_file(arm: Any, base_dir: Path, name: str) -> Any:
    """An arm given as an overlay file (``arm: file.yaml`` or ``{file: file.yaml, match: ...}``): the file's
    sections with the mapping's own keys merged over them; relative paths resolved."""
    from ..config import _resolve_relative_paths

    if isinstance(arm, str):
        arm = {"file": arm}
    if not isinstance(arm, dict):
        return arm
    arm = dict(arm)
    file = arm.pop("file", None)
    if file is not None:
        overlay_path = (base_dir / str(file)).resolve()
        if not overlay_path.is_file():
            raise ConfigError(f"arm {name}: overlay file {file} not found (looked at {overlay_path})",
                              hint="give the path relative to the compare config")
        found, _ = read_yaml(overlay_path)
        _resolve_relative_paths(found, overlay_path.parent)
        arm = merge_overlay(found, arm)
    _resolve_relative_paths(arm, base_dir)
    return arm


def load_compare(path: Path) -> CompareConfig:
    """Read and validate COMPARE.yaml; a file ``base`` is read relative to it, relative paths resolved."""
    from ..config import _resolve_relative_paths

    path = Path(path)
    data, _ = read_yaml(path)
    base = data.get("base")
    base_dir = path.resolve().parent
    if isinstance(base, str):
        base_path = (base_dir / base).resolve()
        base, _ = read_yaml(base_path)
        _resolve_relative_paths(base, base_path.parent)
    elif isinstance(base, dict):
        _resolve_relative_paths(base, base_dir)
    else:
        raise ConfigError(f"{path}: `base` must be a run-config file path or an inline run config",
                          hint="e.g. base: configs/demo.yaml")
    arms = data.get("arms")
    if isinstance(arms, dict):
        data = {**data, "arms": {name: _arm_with_file(arm, base_dir, name) for name, arm in arms.items()}}
    try:
        return CompareConfig.model_validate({**data, "base": base})
    except ValidationError as exc:
        problems = "\n".join(f"  {'.'.join(map(str, e['loc'])) or '<top level>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {exc.error_count()} error(s)\n{problems}",
                          hint="see docs/benchmarks.md (spectra compare) for the compare config keys") from None
