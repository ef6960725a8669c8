"""Calibration: run a few training batches through the model and collect each candidate's gradient sketch."""

from __future__ import annotations

import torch
import torch.distributed as dist

from spectra_core.errors import InputError
from spectra_core.strategies import TrainingSession
from spectra_core.training.distributed import world
from spectra_core.training.loss import causal_lm_loss

from .projection import paused
from .sketch import GradientSketch


def collect_signals(session: TrainingSession, names: list[str], *, batches: int, dim: int,
                    seed: int) -> dict[str, torch.Tensor]:
    """Sketched dense-weight gradients (out × dim, float32) of ``names`` over ``batches`` calibration
    batches per process, summed over processes; LoRA gradients are cleared afterwards.

    Raises InputError naming the modules whose gradient is all zero or not finite.
    """
    if batches < 1:
        raise InputError(f"calibration needs at least one batch, got {batches}",
                         hint="set gradient_merger.options.calibration_batches ≥ 1")
    model = session.model
    lora = session.lora_modules()
    missing = [n for n in names if n not in lora]
    if missing:
        raise InputError(f"{len(missing)} plan modules carry no LoRA layer in the model (e.g. {missing[0]})",
                         hint="the plan and the model disagree; re-run `spectra plan`")
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    seen = 0
    with paused(), GradientSketch({n: lora[n] for n in names}, dim, seed) as sketch:
        for batch in session.calibration_batches(batches):
            loss, count = causal_lm_loss(model, {k: v.to(device) for k, v in batch.items()})
            if count:
                (loss / count).backward()
            seen += 1
    for p in model.parameters():
        p.grad = None
    model.train(was_training)
    if seen == 0:
        raise InputError("calibration got no batch from the training data",
                         hint="check the data section (the training split is empty?)")
    signals = {n: sketch.sketches.get(n, torch.zeros(lora[n].out_features, dim, device=device)) for n in names}
    _all_reduce(signals, names)
    check_signals(signals)
    return signals


def _all_reduce(signals: dict[str, torch.Tensor], names: list[str]) -> None:
    """Sum the sketches over processes (same order everywhere), so every process groups alike."""
    if world() == 1 or not names:
        return
    flat = torch.cat([signals[n].reshape(-1) for n in names])
    dist.all_reduce(flat)
    offset = 0
    for n in names:
        k = signals[n].numel()
        signals[n] = flat[offset:offset + k].view_as(signals[n])
        offset += k


def check_signals(signals: dict[str, torch.Tensor]) -> None:
    """Refuse gradients that are all zero or contain NaN/inf, naming the modules."""
    bad = {n: ("not finite" if not torch.isfinite(s).all() else "all zero")
           for n, s in signals.items() if not torch.isfinite(s).all() or not bool(s.abs().sum())}
    if bad:
        shown = ", ".join(f"{n} ({why})" for n, why in list(bad.items())[:6])
        more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
        raise InputError(f"calibration gradients of {len(bad)} module(s) are unusable: {shown}{more}",
                         hint="check the data (do the batches have labels?) and the base weights (NaN?), "
                              "or exclude those modules in targets.exclude")

