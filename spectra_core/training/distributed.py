"""Process setup on accelerate and the few collectives the trainer needs (gloo on CPU, nccl on GPU).

Gradients are all-reduced by hand after backward rather than through a DDP wrapper, so gradient
mergers and rebalancers may tie parameters or change requires_grad while training runs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def make_accelerator():
    """An Accelerator; on a machine without CUDA it runs on CPU with one thread per process."""
    from accelerate import Accelerator

    cpu = not torch.cuda.is_available()
    acc = Accelerator(cpu=cpu)
    if cpu and acc.num_processes > 1:
        torch.set_num_threads(1)
    return acc


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over processes (missing grads count as zeros)."""
    n = world()
    if n == 1 or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= n
    offset = 0
    for p in params:
        k = p.numel()
        p.grad.copy_(flat[offset:offset + k].view_as(p.grad))
        offset += k


def collective_device() -> torch.device:
    """Where tensors for a collective must live: the current GPU when the process group is NCCL-only
    (accelerate's default on CUDA, which has no CPU backend), else the CPU."""
    backend = str(dist.get_backend()) if world() > 1 else ""
    if torch.cuda.is_available() and "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few floats over processes."""
    if world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if world() > 1:
        dist.barrier()
