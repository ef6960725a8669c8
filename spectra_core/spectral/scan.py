"""Running a scan: type filter, cache, progress, and splitting tensors across torchrun processes."""

from __future__ import annotations

import fnmatch
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from spectra_core.devices import local_device
from spectra_core.errors import InputError, SpectraError
from spectra_core.registry import get_registry
from spectra_core.scores import Scores
from spectra_core.strategies import Scorer, checked_scores
from spectra_core.spectral import cache
from spectra_core.spectral.phases import phase
from spectra_core.spectral.sources import EntrySource, open_weights
from spectra_core.spectral.types import module_type


@dataclass
class ScanResult:
    """Scores in source order, remarks about special modules, and how the result was obtained."""

    scores: Scores
    notes: list[str] = field(default_factory=list)
    cached: bool = False
    seconds: float = 0.0
    world_size: int = 1


def scan_device(device: str = "auto") -> torch.device:
    """The device spectra are computed on: ``auto`` is this process's GPU (``LOCAL_RANK``) when CUDA
    is available, else the CPU; ``cuda`` without a usable GPU is an input error."""
    if device == "auto":
        return local_device()
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"scan device {device!r} asked for, but torch sees no CUDA GPU",
                             hint="use --device cpu (or auto), or install a CUDA build of torch")
        if device == "cuda":
            return local_device()
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown scan device {device!r}", hint="use auto, cpu, cuda or cuda:N") from exc


class _Progress:
    """A WeightSource wrapper that moves each tensor to ``device`` and shows a tqdm bar, one tick per tensor."""

    def __init__(self, source: EntrySource, enabled: bool, device: torch.device) -> None:
        self.source, self.enabled, self.device = source, enabled, device
        self.fingerprint = source.fingerprint

    def __len__(self) -> int:
        return len(self.source)

    def names(self) -> list[str]:
        return self.source.names()

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        from tqdm import tqdm

        with tqdm(total=len(self.source), desc="scan", unit="tensor", disable=not self.enabled,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for name, w in self.source:
                bar.set_postfix_str(name[-40:], refresh=False)
                yield name, w.to(self.device)
                bar.update(1)


def filter_types(source: EntrySource, types: Sequence[str] | None) -> EntrySource:
    """Keep modules whose type equals (or glob-matches) one of ``types``; matching nothing is an error."""
    if not types:
        return source
    keep = [n for n in source.names() if any(fnmatch.fnmatchcase(module_type(n), t) for t in types)]
    if not keep:
        available = ", ".join(dict.fromkeys(module_type(n) for n in source.names()))
        raise InputError(f"no module of {source.label} matches --types {' '.join(types)}",
                         hint=f"available types: {available}")
    return source.subset(keep)


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():  # training reuses this group: give it NCCL for CUDA tensors
            torch.cuda.set_device(local_device())
            dist.init_process_group("cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group("gloo")
    torch.set_num_threads(1)
    return dist.get_rank(), dist.get_world_size()


def run_scan(model: Any, scorer: str | Scorer = "spectrum", options: dict[str, Any] | None = None, *,
             types: Sequence[str] | None = None, names: Sequence[str] | None = None,
             use_cache: bool = True, progress: bool = False, device: str = "auto") -> ScanResult:
    """Score ``model`` (path, ``bundled:…`` or nn.Module) with a scorer (a registered name or an instance).

    ``device`` (see :func:`scan_device`) is where each tensor is moved before it is scored.

    Under ``torchrun`` the tensors are split round-robin across processes and every process
    returns the same gathered result (in source order, identical to one process at one thread).
    """
    start = time.perf_counter()
    where = scan_device(device)
    if isinstance(scorer, Scorer):
        strategy = scorer
    else:
        with phase("import"):  # the first call loads every plugin's entry point
            registry = get_registry()
        strategy = registry.create("scorer", scorer, options or {})
    source = filter_types(open_weights(model, names), types)
    opts = strategy.options.model_dump()
    key = cache.cache_key(source.fingerprint, strategy.name, opts, source.names(),
                          code=cache.code_identity(type(strategy)))
    rank, world = _distributed()
    if use_cache and (hit := cache.load_cached(key)) is not None:
        return ScanResult(hit, cached=True, seconds=time.perf_counter() - start, world_size=world)
    mine = source.subset(source.names()[rank::world]) if world > 1 else source
    try:
        part: Any = checked_scores(strategy.score(_Progress(mine, progress and rank == 0, where)), strategy)
        notes = list(getattr(strategy, "notes", []))
    except SpectraError as exc:
        if world == 1:
            raise
        part, notes = exc, []
    if world > 1:
        part, notes = _gather(part, notes, world)
    scores = _in_order(part, source.names(), source.fingerprint)
    if use_cache and rank == 0:
        with phase("write"):
            cache.store(key, scores)
    return ScanResult(scores, notes, seconds=time.perf_counter() - start, world_size=world)


def _gather(part: Any, notes: list[str], world: int) -> tuple[Scores, list[str]]:
    """All-gather every process's Scores; re-raise the first process's error on every process."""
    import torch.distributed as dist

    everything: list[Any] = [None] * world
    dist.all_gather_object(everything, (part, notes))
    for piece, _ in everything:
        if isinstance(piece, SpectraError):
            raise piece
    first = everything[0][0]
    modules = [m for piece, _ in everything for m in piece.modules]
    return first.model_copy(update={"modules": modules}), [n for _, ns in everything for n in ns]


def _in_order(scores: Scores, order: list[str], fingerprint: str) -> Scores:
    rank = {n: i for i, n in enumerate(order)}
    modules = sorted(scores.modules, key=lambda m: rank.get(m.name, len(rank)))
    return scores.model_copy(update={"modules": modules, "fingerprint": fingerprint})
