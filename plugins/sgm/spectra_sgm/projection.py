"""Merge mode ``project``: combine a group's member gradients through a low-rank projection.

Tied factors receive the plain sum of the members' gradients, ``S = Σ_i g_i`` (mode ``sum``). Mode
``project`` keeps only the part the members agree on. Per micro-batch and process, for each factor
(``lora_A``, ``lora_B``) of a group with k members:

- ``M`` is the k × d matrix whose rows are the members' own gradients of the shared factor
  (``g_i = ∂L/∂θ`` through member i alone; the core captures them when the merger asks for them);
- ``U_q`` are the top-q eigenvectors of the k × k Gram matrix ``M Mᵀ`` (q = ``project_rank``), so
  ``V_q = Mᵀ U_q Λ_q^{-1/2}`` spans the group's shared gradient subspace (top-q right singular vectors);
- the merged gradient is ``V_q V_qᵀ S = Mᵀ w`` with member weights ``w = U_q U_qᵀ 𝟙``.

Members that agree get weight ≈ 1 (then the result is the sum); a member orthogonal to the consensus
gets ≈ 0. With q ≥ k the projection is the identity. The trainer then averages the (projected)
gradients over processes, as for any parameter. Cost: member gradients held until the merge
(one factor-sized buffer per member and factor), and one k × k eigendecomposition per factor.
"""

from __future__ import annotations

import torch

from spectra_core import GroupGradients


def member_weights(m: torch.Tensor, q: int) -> torch.Tensor:
    """``w = U_q U_qᵀ 𝟙`` for member gradients ``m`` (k × d); zero-variance directions are dropped."""
    gram = m.double() @ m.double().T
    values, vectors = torch.linalg.eigh(gram)  # ascending
    keep = vectors[:, values > values.max() * 1e-12][:, -q:] if values.max() > 0 else vectors[:, :0]
    ones = torch.ones(m.shape[0], dtype=torch.float64, device=m.device)
    return keep @ (keep.T @ ones)


def projected(groups: list[GroupGradients], q: int) -> dict[str, dict[str, torch.Tensor]]:
    """Each group's summed gradient replaced by ``Mᵀw`` (its projection); groups whose member gradients
    were not all captured (e.g. just regrouped) keep the sum."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for g in groups:
        if g.per_member is None:
            continue
        out[g.group] = {}
        for f, summed in g.summed.items():
            m = torch.stack([g.per_member[name][f].reshape(-1) for name in g.members])
            w = member_weights(m, q).to(m.dtype)
            out[g.group][f] = summed + ((w - 1.0) @ m).view_as(summed).to(summed.dtype)  # Mᵀw − Mᵀ𝟙 + S
    return out
