"""Calibration: run a few training batches through a LoRA-wrapped model and measure, per module, a
fixed random sketch ``G·R`` of the loss gradient with respect to the (frozen) dense weight.

For a linear layer ``y = x Wᵀ`` the gradient over a batch is ``G = Σ_tokens gᵀ x`` (out × in), with
``g = ∂L/∂y``. Storing ``G`` for every module would cost a full weight each, so hooks accumulate
``G·R = Σ_tokens gᵀ (x R)`` instead, where ``R`` (in × p) has i.i.d. N(0, 1/p) entries drawn from a
generator seeded by ``(seed, in_features)``. Since ``E[R Rᵀ] = I``:

- ``E[⟨G_i R, G_j R⟩] = ⟨G_i, G_j⟩`` for modules sharing ``R`` (same input size), so cosines of
  sketches estimate cosines of dense gradients (Johnson–Lindenstrauss; used by the ``sgm`` plugin);
- ``E‖G R‖²_F = ‖G‖²_F``, so ``‖G R‖_F`` estimates ``‖G‖_F`` (used by the ``grad-norm`` scorer).

A hook on a fused MoE expert tensor sees the whole expert block, not each expert's weight, so an expert
(``{tensor}.{i}``) is sketched through its LoRA instead: while calibrating, the tensor's LoRA carries
``p`` extra components per expert with ``A = Rᵀ`` and ``B = 0`` (the model is unchanged), and the
gradient of those B columns is ``scale · G_e · R`` (:func:`spectra_core.adapters.expert_probes`).

Cost per module and batch: one ``tokens × in × p`` matmul in the forward hook, one ``out × tokens × p``
in the backward hook; memory ``out × p`` float32 per module plus the ``tokens × p`` projected input
held from a forward until its backward.

:func:`spectra_core.training.session.calibration_session` builds what a data-aware scorer needs before
any plan exists: the base from the configured quantizer, a rank-1 LoRA on every target with ``B = 0``
(:func:`probe_plan`: the model computes the base function, yet every target's output carries a
gradient) and the trainer's first batches (:func:`first_batches`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from .adapters import ADAPTER, expert_probes
from .errors import InputError
from .expert_plan import split
from .plan import AdapterPlan, ModulePlan
from .strategies import TargetModule
from .training.distributed import world
from .training.loss import lm_loss

CALIBRATION_RANK = 1


# ----- the sketch ------------------------------------------------------------------------------------
def projection(in_features: int, dim: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The fixed sketch matrix R (in_features × dim) for one input size."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + in_features)
    return (torch.randn(in_features, dim, generator=g) / dim ** 0.5).to(device)


class GradientSketch:
    """Context manager: while active, accumulates ``G·R`` for each named module's output gradient."""

    def __init__(self, modules: dict[str, torch.nn.Module], dim: int, seed: int) -> None:
        self.modules, self.dim, self.seed = modules, dim, seed
        self.sketches: dict[str, torch.Tensor] = {}
        self._projections: dict[tuple[int, str], torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> GradientSketch:
        self._handles = [m.register_forward_hook(self._forward_hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _projection(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[-1], str(x.device))
        if key not in self._projections:
            self._projections[key] = projection(x.shape[-1], self.dim, self.seed, x.device)
        return self._projections[key]

    def _forward_hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad):
                return
            x = args[0].detach()
            xr = x.reshape(-1, x.shape[-1]).float() @ self._projection(x)

            def on_grad(grad: torch.Tensor) -> None:
                s = grad.detach().reshape(-1, grad.shape[-1]).float().T @ xr
                self.sketches[name] = s if name not in self.sketches else self.sketches[name] + s

            output.register_hook(on_grad)

        return hook


# ----- collecting signals ----------------------------------------------------------------------------
def collect_gradient_signals(model: torch.nn.Module, layers: dict[str, torch.nn.Module],
                             batches_of: Callable[[int], Iterable[dict[str, torch.Tensor]]], names: list[str], *,
                             batches: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Sketched dense-weight gradients (out × dim, float32) of ``names`` (``layers``: their LoRA layers
    in ``model``; an expert ``{tensor}.{i}`` is read through its tensor's layer), each batch's loss averaged per label token, summed over ``batches`` batches from
    ``batches_of`` per process and over processes; LoRA gradients are cleared afterwards.
    Strategies call it as ``session.gradient_signals(names, batches=, dim=, seed=)``.

    Raises InputError naming the modules whose gradient is all zero or not finite.
    """
    if batches < 1:
        raise InputError(f"calibration needs at least one batch, got {batches}",
                         hint="set the strategy's calibration_batches option ≥ 1")
    lora = layers
    experts = {n: split(n) for n in names if n not in lora and hasattr(lora.get(n.rpartition(".")[0]), "get_param")}
    missing = [n for n in names if n not in lora and n not in experts]
    if missing:
        raise InputError(f"{len(missing)} modules carry no LoRA layer in the model (e.g. {missing[0]})",
                         hint="the plan and the model disagree; re-run `spectra plan`")
    modules = [n for n in names if n not in experts]
    tensors = {tensor: lora[tensor] for tensor, _ in experts.values()}
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    seen = 0
    with GradientSketch({n: lora[n] for n in modules}, dim, seed) as sketch, \
            expert_probes(tensors, dim, lambda d_in: projection(d_in, dim, seed, device)) as probed:
        for batch in batches_of(batches):
            loss, count = lm_loss(model, {k: v.to(device) for k, v in batch.items()})
            if count:
                (loss / count).backward()
            seen += 1
        per_expert = probed()
    for p in model.parameters():
        p.grad = None
    model.train(was_training)
    if seen == 0:
        raise InputError("calibration got no batch from the training data",
                         hint="check the data section (the training split is empty?)")
    signals = {n: sketch.sketches.get(n, torch.zeros(lora[n].out_features, dim, device=device)) for n in modules}
    for n, (tensor, index) in experts.items():
        signals[n] = per_expert[tensor][index] if tensor in per_expert else \
            torch.zeros(lora[tensor].lora_B[ADAPTER].weight.shape[0], dim, device=device)
    signals = {n: signals[n] for n in names}
    _all_reduce(signals, names)
    check_signals(signals)
    return signals


def _all_reduce(signals: dict[str, torch.Tensor], names: list[str]) -> None:
    """Sum the sketches over processes (same order everywhere), so every process sees the same signals."""
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


# ----- a session before any plan exists -----------------------------------------------------------------
def first_batches(examples: list[dict[str, list[int]]], *, batch_size: int, seed: int, pad_id: int,
                  n: int) -> Iterator[dict[str, torch.Tensor]]:
    """The first ``n`` micro-batches a single-process training run with this seed would see."""
    from .data import collate, micro_batch_indices

    for m in range(n):
        idx = micro_batch_indices(m, batch_size=batch_size, n=len(examples), seed=seed)
        yield collate([examples[i] for i in idx], pad_id)


def probe_plan(targets: list[TargetModule]) -> AdapterPlan:
    """Every target active with a rank-1 LoRA (peft initialises B = 0: the model is the base)."""
    modules = {t.name: ModulePlan(name=t.name, type=t.type, kind=t.kind, shape=t.shape(), active=True,
                                  rank=CALIBRATION_RANK, alpha=float(CALIBRATION_RANK)) for t in targets}
    return AdapterPlan(allocator="calibration", modules=modules)
