"""Merge mode ``project``: combine a group's member gradients through a low-rank projection.

Tied factors receive the plain sum of the members' gradients, ``S = Σ_i g_i`` (mode ``sum``). Mode
``project`` keeps only the part the members agree on. Per micro-batch and process, for each factor
(``lora_A``, ``lora_B``) of a group with k members:

- ``M`` is the k × d matrix whose rows are the members' own gradients of the shared factor
  (``g_i = ∂L/∂θ`` through member i alone, captured by hooks on each member's ``lora_A``/``lora_B``);
- ``U_q`` are the top-q eigenvectors of the k × k Gram matrix ``M Mᵀ`` (q = ``project_rank``), so
  ``V_q = Mᵀ U_q Λ_q^{-1/2}`` spans the group's shared gradient subspace (top-q right singular vectors);
- the merged gradient is ``V_q V_qᵀ S = Mᵀ w`` with member weights ``w = U_q U_qᵀ 𝟙``.

Members that agree get weight ≈ 1 (then the result is the sum); a member orthogonal to the consensus
gets ≈ 0. With q ≥ k the projection is the identity. The trainer then averages the (projected)
gradients over processes, as for any parameter. Cost: member gradients held until the merge
(one factor-sized buffer per member and factor), and one k × k eigendecomposition per factor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from spectra_core.plan import AdapterPlan
from spectra_core.training.modeling import ADAPTER

from .tying import FACTORS, factor


def member_weights(m: torch.Tensor, q: int) -> torch.Tensor:
    """``w = U_q U_qᵀ 𝟙`` for member gradients ``m`` (k × d); zero-variance directions are dropped."""
    gram = m.double() @ m.double().T
    values, vectors = torch.linalg.eigh(gram)  # ascending
    keep = vectors[:, values > values.max() * 1e-12][:, -q:] if values.max() > 0 else vectors[:, :0]
    ones = torch.ones(m.shape[0], dtype=torch.float64, device=m.device)
    return keep @ (keep.T @ ones)


_paused = 0


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Capture nothing meanwhile (calibration passes during training are not training gradients)."""
    global _paused
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1


class MemberGradients:
    """Hooks on each member's ``lora_A``/``lora_B`` capture its own gradient of the shared factors."""

    def __init__(self) -> None:
        self.grads: dict[tuple[str, str], torch.Tensor] = {}
        self._hooked: set[str] = set()
        self._handles: list[Any] = []

    def attach(self, plan: AdapterPlan, lora: dict[str, torch.nn.Module]) -> None:
        """(Re)hook exactly the members of the plan's groups."""
        members = {m for ms in plan.groups().values() for m in ms}
        if members == self._hooked:
            return
        self.detach()
        for name in sorted(members):
            for f in FACTORS:
                self._handles.append(getattr(lora[name], f)[ADAPTER].register_forward_hook(self._hook(name, f)))
        self._hooked = members

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._hooked = [], set()
        self.grads.clear()

    def _hook(self, name: str, which: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if _paused or not (torch.is_grad_enabled() and output.requires_grad):
                return
            x = args[0]

            def on_grad(grad: torch.Tensor) -> None:
                g = grad.reshape(-1, grad.shape[-1]).float().T @ x.detach().reshape(-1, x.shape[-1]).float()
                key = (name, which)
                self.grads[key] = g if key not in self.grads else self.grads[key] + g

            output.register_hook(on_grad)

        return hook

    @torch.no_grad()
    def merge(self, plan: AdapterPlan, lora: dict[str, torch.nn.Module], q: int) -> None:
        """Replace each group's summed gradient of this micro-batch by its projection; then re-hook.

        A group with a member whose gradient was not captured (just regrouped) keeps the sum.
        """
        for members in plan.groups().values():
            for f in FACTORS:
                p = factor(lora[members[0]], f)
                grads = [self.grads.get((m, f)) for m in members]
                if p.grad is None or any(g is None for g in grads):
                    continue
                m = torch.stack([g.reshape(-1) for g in grads])
                w = member_weights(m, q).to(m.dtype)
                correction = (w - 1.0) @ m  # Mᵀw − Mᵀ𝟙
                p.grad.add_(correction.view_as(p.grad).to(p.grad.dtype))
        self.grads.clear()
        self.attach(plan, lora)
