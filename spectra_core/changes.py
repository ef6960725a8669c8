"""Changes a gradient merger or rebalancer *proposes*; the core validates and applies them.

A strategy never edits the model, the optimizer or the plan itself. It returns a list of changes;
the core checks them all first (a bad one names the strategy and the change, and nothing is
applied), then applies them once to model and optimizer, records each changed plan field in
``plan.history`` with the change's reason (plus what the core did, e.g. how much update energy a
shrink kept) and logs them in ``metrics.jsonl``.

    from spectra_core.changes import activate, deactivate, resize, annotate, Tie, Untie

    activate("model.layers.3.self_attn.q_proj", "score rose to 4.2", score=4.2)
    resize("model.layers.3.mlp.up_proj", 4, "update has 90 % of its energy in 3 directions", alpha=8)
    Tie(group="g0", modules=["model.layers.1.self_attn.q_proj", "model.layers.2.self_attn.q_proj"],
        reason="gradient cosine 0.93", init="mean")
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

OnDeactivate = Literal["keep", "drop", "merge"]


class _Proposal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str = Field(description="Why; recorded in plan.history for every field the change sets.")


class ModuleChange(_Proposal):
    """One module's new plan fields; a field left ``None`` stays as it is.

    ``active`` switches the module's LoRA on or off (it must carry one: plan mode ``all-inactive``, or
    a module that trained). ``rank``/``alpha`` resize its LoRA in place: a shrink keeps the best
    rank-r approximation of the update (truncated SVD), a growth zero-pads it (update unchanged), and
    the optimizer state follows the new basis. ``score``, ``tier`` and ``lr_scale`` only change the
    plan (the optimizer's LR groups follow ``lr_scale``). ``on_deactivate`` says what happens to the
    update of a module switched off: ``keep`` it as a frozen LoRA, ``drop`` it (B = 0), or ``merge``
    it into a float base weight (on a 4-bit base the core keeps it and says so in the history).
    """

    kind: Literal["module"] = "module"
    module: str
    active: bool | None = None
    rank: int | None = Field(default=None, gt=0)
    alpha: float | None = Field(default=None, gt=0)
    lr_scale: float | None = Field(default=None, ge=0)
    tier: str | None = None
    score: float | None = None
    on_deactivate: OnDeactivate = "keep"


class Tie(_Proposal):
    """Make ``modules`` share one LoRA as group ``group``.

    ``init: first`` starts the shared LoRA from the first member's values; ``mean`` from the best
    rank-r approximation of the members' mean update. Members must have one weight shape, rank,
    alpha and LR scale. Proposing an existing group's exact members again only relabels it (its
    parameters and optimizer state are kept); members of another group are untied from it first.
    """

    kind: Literal["tie"] = "tie"
    group: str = Field(min_length=1)
    modules: list[str] = Field(min_length=2)
    init: Literal["first", "mean"] = "first"


class Untie(_Proposal):
    """Give ``module`` its own LoRA again, starting from the group's current values."""

    kind: Literal["untie"] = "untie"
    module: str


Change = Annotated[Union[ModuleChange, Tie, Untie], Field(discriminator="kind")]


def activate(module: str, reason: str, **fields: object) -> ModuleChange:
    """Switch ``module``'s LoRA on (plus optional ``score``/``tier``/``lr_scale``)."""
    return ModuleChange(module=module, reason=reason, active=True, **fields)


def deactivate(module: str, reason: str, *, on_deactivate: OnDeactivate = "keep", **fields: object) -> ModuleChange:
    """Switch ``module``'s LoRA off; its update is kept frozen, dropped or merged (``on_deactivate``)."""
    return ModuleChange(module=module, reason=reason, active=False, on_deactivate=on_deactivate, **fields)


def resize(module: str, rank: int, reason: str, *, alpha: float | None = None, **fields: object) -> ModuleChange:
    """Give ``module``'s LoRA rank ``rank`` (and ``alpha``), keeping as much of its update as fits."""
    return ModuleChange(module=module, reason=reason, rank=rank, alpha=alpha, **fields)


def annotate(module: str, reason: str, **fields: object) -> ModuleChange:
    """Plan-only fields (``score``, ``tier``, ``lr_scale``); the LoRA itself is untouched."""
    return ModuleChange(module=module, reason=reason, **fields)
