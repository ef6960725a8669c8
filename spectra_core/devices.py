"""Which device this process computes on."""

from __future__ import annotations

import os

import torch


def local_device() -> torch.device:
    """This process's GPU when CUDA is available (``LOCAL_RANK`` under torchrun/accelerate, else GPU 0),
    otherwise the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
