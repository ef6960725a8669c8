"""The calibration signal: a fixed, seeded random sketch ``G·R`` of each module's dense weight gradient.

For a linear layer ``y = x Wᵀ`` the gradient of the loss with respect to the (frozen) base weight over
a batch is ``G = Σ_tokens gᵀ x`` (out × in), with ``g = ∂L/∂y``. Storing ``G`` for every candidate
would cost a full weight per module, so hooks accumulate ``G·R = Σ_tokens gᵀ (x R)`` instead, where
``R`` (in × p) has i.i.d. N(0, 1/p) entries drawn from a generator seeded by ``(seed, in_features)``.
Modules with the same input size share ``R``, so ``E[⟨G_i R, G_j R⟩] = ⟨G_i, G_j⟩`` and cosines of
sketches estimate cosines of the dense gradients (Johnson–Lindenstrauss).

Cost per module and calibration batch: one ``tokens × in × p`` matmul in the forward hook, one
``out × tokens × p`` in the backward hook; memory ``out × p`` float32 per module, plus the
``tokens × p`` projected input held from a forward until its backward.
"""

from __future__ import annotations

from typing import Any

import torch


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
