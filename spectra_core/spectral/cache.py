"""Scan results cached by checkpoint fingerprint + scorer + options + module names."""

from __future__ import annotations

import hashlib
import json
import os
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


def cache_key(fingerprint: str, scorer: str, options: dict[str, Any], names: list[str]) -> str:
    blob = json.dumps([fingerprint, scorer, options, names], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def load_cached(key: str) -> Scores | None:
    path = cache_dir() / f"{key}.json"
    try:
        return Scores.load(path) if path.is_file() else None
    except (InputError, ValidationError, ValueError):
        return None  # a stale or damaged entry is simply recomputed


def store(key: str, scores: Scores) -> Path:
    return scores.save(cache_dir() / f"{key}.json")
