"""Scan results cached by checkpoint fingerprint + scorer + options + module names."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from spectra_core.errors import InputError
from spectra_core.scores import Scores


def cache_dir() -> Path:
    """``$SPECTRA_SCAN_CACHE``, else ``$SPECTRA_CACHE/scans`` (default ``~/.cache/spectra/scans``)."""
    from spectra_core.models import cache_root

    override = os.environ.get("SPECTRA_SCAN_CACHE")
    return Path(override) if override else cache_root() / "scans"


def cache_key(fingerprint: str, scorer: str, options: dict[str, Any], names: list[str],
              code: dict[str, str] | None = None) -> str:
    """The key of one scan: checkpoint, scorer name, every option, module names and the scorer's code
    (:func:`code_identity`), so a changed scorer never returns its old scores."""
    blob = json.dumps([fingerprint, scorer, options, names, code or {}], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def code_identity(cls: type) -> dict[str, str]:
    """Which code a scorer class is: its distribution and version, and a hash of its top-level package's
    (or module's) Python source. Always the hash: a source checkout's ``*.egg-info`` reports neither an
    editable install nor a new version when the code changes, and a version alone would serve stale scores."""
    module = cls.__module__
    identity = {"class": f"{module}.{cls.__qualname__}"}
    dists = _packages_distributions().get(module.split(".")[0], [])
    if dists:
        dist = metadata.distribution(dists[0])
        identity.update(distribution=dist.metadata["Name"], version=dist.version)
    identity["source"] = _source_hash(module)
    return identity


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


@functools.lru_cache(maxsize=32)
def _source_hash(module: str) -> str:
    """sha256 over the ``.py`` files of ``module``'s top-level package (or the top-level module itself)."""
    top = sys.modules[module.split(".")[0]]
    if hasattr(top, "__path__"):
        files = [(f.relative_to(root).as_posix(), f) for root in map(Path, top.__path__) for f in sorted(root.rglob("*.py"))]
    elif getattr(top, "__file__", None):
        files = [(Path(top.__file__).name, Path(top.__file__))]
    else:  # code without a file (an interactive session): a key that never repeats, so never a stale hit
        return os.urandom(16).hex()
    digest = hashlib.sha256()
    for name, f in files:
        digest.update(name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:32]


def load_cached(key: str) -> Scores | None:
    path = cache_dir() / f"{key}.json"
    try:
        return Scores.load(path) if path.is_file() else None
    except (InputError, ValidationError, ValueError):
        return None  # a stale or damaged entry is simply recomputed


def store(key: str, scores: Scores) -> Path:
    return scores.save(cache_dir() / f"{key}.json")
