"""The :class:`~spectra_core.strategies.TrainingSession` handed to scorers, gradient mergers and rebalancers.

Strategies read it (plan, handles, batches, gradient sketches); only the core changes model,
optimizer and plan, through :meth:`Session.apply` (proposed changes) and :meth:`Session.merge_gradients`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from .. import adapters
from ..adapters import AdapterHandle, MemberGradients
from ..experts import ExpertSteps
from ..calibration import collect_gradient_signals
from ..changes import Change
from ..errors import InputError
from ..plan import AdapterPlan, PlanChange
from ..strategies import GroupGradients
from .apply import apply_changes, check_merged_gradients
from .distributed import world
from .optim import param_groups, regroup


class Session:
    """Live training state: the peft model, the plan, the optimizer and the optimizer step.

    ``batches(n)`` yields ``n`` deterministic training batches (the trainer passes its data stream);
    a session built without one has no calibration data. ``run_dir`` is the run directory a strategy
    may write its own records into (None outside training). ``merger``: the run's gradient merger,
    whose :meth:`~spectra_core.strategies.GradientMerger.merge_gradients` :meth:`merge_gradients` calls.
    """

    def __init__(self, model: torch.nn.Module, plan: AdapterPlan, optimizer: torch.optim.Optimizer | None = None,
                 *, batches: Callable[[int], Iterable[dict[str, torch.Tensor]]] | None = None,
                 lr: float = 0.0, weight_decay: float = 0.0, step: int = 0, seed: int = 0,
                 run_dir: Path | None = None, merger: Any = None, is_main_process: bool = True) -> None:
        self.model = model
        self.plan = plan
        self.optimizer = optimizer
        self.step = step
        self.seed = seed
        self.run_dir = run_dir
        self.is_main_process = is_main_process
        self.merger = merger
        self._batches = batches
        self._lr = lr
        self._weight_decay = weight_decay
        self._members = MemberGradients() if merger is not None and merger.wants_member_gradients() else None
        if self._members is not None:
            self._members.attach(model, plan)
        self.expert_steps = ExpertSteps(model, plan)

    # ----- what strategies read ------------------------------------------------------------------------
    def calibration_batches(self, n: int) -> Iterable[dict[str, torch.Tensor]]:
        """``n`` training batches (input_ids, attention_mask, labels), deterministic for the seed."""
        if self._batches is None:
            raise RuntimeError("this session has no training data (it was built to load a finished run)")
        return self._batches(n)

    def adapter(self, name: str) -> AdapterHandle:
        """The read-only handle of plan module ``name``'s LoRA."""
        handle = self.adapters().get(name)
        if handle is None:
            raise InputError(f"module {name!r} carries no LoRA in the model",
                             hint="only modules the plan injects (rank > 0; all of them in mode all-inactive) have one")
        return handle

    def adapters(self) -> dict[str, AdapterHandle]:
        """Handles of every plan module (and expert) that carries a LoRA, in model order."""
        return adapters.handles(self.model, self.plan)

    def effective_weights(self, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, float32 base weight + LoRA delta), one module at a time (4-bit bases dequantized)."""
        handles = self.adapters()
        for name in names:
            if name not in handles:
                self.adapter(name)  # raises, naming the module
            yield name, handles[name].effective_weight()

    def gradient_signals(self, names: list[str], *, batches: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
        """Sketched dense-weight gradients of ``names`` (see :func:`spectra_core.calibration.collect_gradient_signals`)."""
        return collect_gradient_signals(self.model, adapters.lora_layers(self.model), self.calibration_batches,
                                        names, batches=batches, dim=dim, seed=seed)

    # ----- what only the core calls ----------------------------------------------------------------------
    def apply(self, changes: list[Change], *, strategy: str) -> list[PlanChange]:
        """Validate and apply a strategy's proposed changes; return the plan history they added."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        recorded = apply_changes(self.model, self.plan, changes, strategy=strategy, step=self.step,
                                 optimizer=self.optimizer, generator=generator)
        self.apply_plan()
        return recorded

    def apply_plan(self) -> None:
        """Make ties, requires_grad, peft's config and the optimizer's param groups follow ``plan``;
        optimizer state of parameters that keep their shape is preserved."""
        adapters.tie_groups(self.model, self.plan)
        adapters.sync_config(self.model, self.plan)
        adapters.set_trainable(self.model, self.plan)
        if self.optimizer is not None:
            regroup(self.optimizer, param_groups(self.model, self.plan, self._lr, self._weight_decay))
        if self._members is not None:
            self._members.attach(self.model, self.plan)
        self.expert_steps = ExpertSteps(self.model, self.plan)

    def training_pass(self) -> contextlib.AbstractContextManager[None]:
        """Around a training micro-batch's forward and backward: member gradients are captured only here."""
        return self._members.capturing() if self._members is not None else contextlib.nullcontext()

    @torch.no_grad()
    def merge_gradients(self) -> None:
        """Hand each tied group's gradients to the merger and write back the gradients it returns."""
        groups = self.plan.groups()
        if self.merger is None or not groups:
            return
        layers = adapters.lora_layers(self.model)
        found = []
        for gid, members in groups.items():
            if gid in self.expert_steps.groups:
                grads = self.expert_steps.group_gradients(gid)
                if grads is not None:
                    summed, own = grads
                    found.append(GroupGradients(gid, list(members), summed,
                                                {members[i]: g for i, g in own.items()}))
                continue
            shared = adapters.factors(layers[members[0]])
            if any(p.grad is None for p in shared.values()):
                continue
            per_member = self._members.take(members) if self._members is not None else None
            found.append(GroupGradients(gid, list(members), {f: p.grad.detach().clone() for f, p in shared.items()},
                                        per_member))
        if self._members is not None:
            self._members.grads.clear()
        new = self.merger.merge_gradients(self, found) if found else {}
        check_merged_gradients(new, found, strategy=self.merger.name)
        for gid, grads in new.items():
            if gid in self.expert_steps.groups:
                self.expert_steps.set_group_gradient(gid, grads)
                continue
            shared = adapters.factors(layers[groups[gid][0]])
            for f, g in grads.items():
                shared[f].grad.copy_(g.to(shared[f].grad.dtype))


def calibration_session(config: Any, quantizer: Any, model_dir: Any, targets: list[Any],
                        plan: AdapterPlan | None = None) -> Session:
    """A session over the configured base (via ``quantizer``) with the LoRA of ``plan`` (default: a probe
    LoRA on every target, :func:`spectra_core.calibration.probe_plan`) and the training split of
    ``config.data``, batched and ordered as the trainer would (``training.seed``)."""
    from transformers import AutoTokenizer

    from ..calibration import first_batches, probe_plan
    from ..data import load_data
    from ..devices import local_device
    from .modeling import build_peft_model, load_base

    if config.data is None:
        raise InputError("a data-aware scorer needs training data, but the config has no data section",
                         hint="add data: {path: FILE} to the config, or use a weight-only scorer (spectrum, mp)")
    seed, batch_size = config.training.seed, config.training.batch_size
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=config.model.trust_remote_code)
    train = load_data(config.data, tokenizer, seed=seed).train
    base = load_base(config, quantizer, model_dir, gradient_checkpointing=config.training.gradient_checkpointing)
    plan = plan if plan is not None else probe_plan(targets)
    model = build_peft_model(base, plan, seed=seed).to(local_device())  # a float base loads on the CPU
    return Session(model, plan, seed=seed, is_main_process=world() == 1 or torch.distributed.get_rank() == 0,
                   batches=lambda n: first_batches(train, batch_size=batch_size, seed=seed,
                                                   pad_id=tokenizer.pad_token_id, n=n))
