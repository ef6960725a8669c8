"""The :class:`~spectra_core.strategies.TrainingSession` handed to gradient mergers and rebalancers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from ..plan import AdapterPlan
from .modeling import effective_weight, lora_modules, sync_requires_grad
from .optim import param_groups, regroup


class Session:
    """Live training state: the peft model, the plan, the optimizer and the optimizer step.

    ``batches(n)`` yields ``n`` deterministic training batches (the trainer passes its data stream);
    a session built without one (e.g. to re-tie a loaded model) has no calibration data.
    ``run_dir`` is the run directory a strategy may write its own records into (None outside training).
    """

    def __init__(self, model: torch.nn.Module, plan: AdapterPlan, optimizer: torch.optim.Optimizer | None = None,
                 *, batches: Callable[[int], Iterable[dict[str, torch.Tensor]]] | None = None,
                 lr: float = 0.0, weight_decay: float = 0.0, step: int = 0,
                 run_dir: Path | None = None) -> None:
        self.model = model
        self.plan = plan
        self.optimizer = optimizer
        self.step = step
        self.run_dir = run_dir
        self._batches = batches
        self._lr = lr
        self._weight_decay = weight_decay

    def calibration_batches(self, n: int) -> Iterable[dict[str, torch.Tensor]]:
        """``n`` training batches (input_ids, attention_mask, labels), deterministic for the seed."""
        if self._batches is None:
            raise RuntimeError("this session has no training data (it was built to load a finished run)")
        return self._batches(n)

    def lora_modules(self) -> dict[str, torch.nn.Module]:
        """Base-model module name → its peft LoRA layer (``lora_A``/``lora_B`` inside)."""
        return lora_modules(self.model)

    def effective_weights(self, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, float32 base weight + LoRA delta), one module at a time (4-bit bases dequantized)."""
        modules = dict(self.model.named_modules())
        prefixed = {n.removeprefix("base_model.model."): m for n, m in modules.items()}
        for name in names:
            if name not in prefixed:
                raise KeyError(f"module {name!r} is not in the model")
            yield name, effective_weight(prefixed[name])

    def apply_plan(self) -> None:
        """Make requires_grad and the optimizer's param groups follow ``plan`` (active, lr_scale);
        optimizer state of parameters that keep their shape is preserved."""
        sync_requires_grad(self.model, self.plan)
        if self.optimizer is not None:
            regroup(self.optimizer, param_groups(self.model, self.plan, self._lr, self._weight_decay))
