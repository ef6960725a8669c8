"""Equal budgets: solve one allocator option (rank or fraction) so an arm's trainable parameters land
within a tolerance of a target count. Counts come from the allocator's plan (no model is loaded)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

DEFAULT_KNOBS = ("allocator.options.rank", "allocator.options.top_fraction", "allocator.options.budget_uniform_rank")


def default_knob(options_fields: set[str]) -> str:
    """The allocator option an arm with ``match`` but no ``solve`` is solved for."""
    for knob in DEFAULT_KNOBS:
        if knob.rsplit(".", 1)[1] in options_fields:
            return knob
    raise ConfigError(f"cannot tell which allocator option to solve (options: {', '.join(sorted(options_fields))})",
                      hint="give the arm `solve: allocator.options.NAME` (an int or a fraction in (0, 1])")


class PlanCounter:
    """Trainable parameters of a pipeline's plan as a function of one allocator option."""

    def __init__(self, pipeline: Any, knob: str | None) -> None:
        self.pipeline = pipeline
        self.scores = pipeline.scan(progress=False)
        self.targets = pipeline.targets()
        self.knob = knob
        section = pipeline.config.allocator
        self.name, self.options = section.name, section.options.model_dump()
        if knob is not None:
            stage, _, option = knob.partition(".options.")
            if stage != "allocator" or not option or option not in self.options:
                raise ConfigError(f"solve: {knob!r} is not an option of allocator {self.name!r}",
                                  hint=f"use allocator.options.<one of {', '.join(sorted(self.options))}>")
            self.option = option

    def changes(self, value: Any) -> dict[str, Any]:
        """The allocator options set for ``value`` (solving a rank keeps the arm's alpha/rank ratio)."""
        out = {self.option: value}
        if self.option == "rank" and "alpha" in self.options:
            out["alpha"] = self.options["alpha"] * value / self.options["rank"]
        return out

    def count(self, value: Any = None) -> int:
        options = {**self.options, **(self.changes(value) if value is not None else {})}
        allocator = self.pipeline.registry.create("allocator", self.name, options)
        return allocator.allocate(self.scores, self.targets).trainable_parameters()

    def solve(self, target: int, tolerance: float) -> tuple[Any, int]:
        """The option value whose count is closest to ``target``; an error when it misses the tolerance."""
        current = self.options[self.option]
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise ConfigError(f"solve: {self.knob} is not numeric", hint="solve a rank (int) or a fraction")
        value = self._solve_int(target) if isinstance(current, int) else self._solve_fraction(target)
        found = self.count(value)
        if abs(found - target) > tolerance * target:
            raise ConfigError(
                f"no {self.knob} gives {target:,} trainable parameters within ±{tolerance:.0%}: the closest, "
                f"{value}, gives {found:,}", hint="solve another option (solve: ...), or raise the arm's tolerance")
        return value, found

    def _solve_int(self, target: int) -> int:
        low, high = 1, 1
        while self.count(high) < target and high < 65536:
            low, high = high, high * 2
        while high - low > 1:  # counts grow with the value: smallest value with count >= target
            mid = (low + high) // 2
            low, high = (mid, high) if self.count(mid) < target else (low, mid)
        return min((low, high), key=lambda v: abs(self.count(v) - target))

    def _solve_fraction(self, target: int) -> float:
        low, high = 1e-6, 1.0
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if self.count(mid) < target else (low, mid)
        return min((low, high), key=lambda v: abs(self.count(v) - target))
