"""Cut the base config's data into training, validation (LR choice) and held-out (reported) record sets.

The three are disjoint by record index, written as JSON lines with the original columns (so every
format a run config accepts still loads), and described in ``splits.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text
from ..config import DataConfig
from ..data import load_records
from ..errors import InputError
from .config import SplitConfig


@dataclass
class Splits:
    train: str
    validation: str
    heldout: str
    train_records: list[int]
    validation_records: list[int]
    heldout_records: list[int]
    heldout_source: str  # "data.validation_path" or "carved from data.path"

    def data_section(self, data: dict[str, Any]) -> dict[str, Any]:
        """The base ``data`` section pointed at the training part, with the held-out set as the trainer's
        evaluation set (the trainer only evaluates on it; validation loss is computed apart)."""
        return {**data, "path": self.train, "validation_path": self.heldout}


def _indices(n: int, n_held: int, n_val: int, order: str, seed: int) -> tuple[list[int], list[int], list[int]]:
    idx = np.arange(n) if order == "tail" else np.random.default_rng(seed).permutation(n)
    held, val, train = idx[n - n_held:], idx[n - n_held - n_val:n - n_held], idx[:n - n_held - n_val]
    return sorted(train.tolist()), sorted(val.tolist()), sorted(held.tolist())


def _write_jsonl(ds: Any, rows: list[int], path: Path) -> None:
    lines = (json.dumps(r, ensure_ascii=False) for r in ds.select(rows))
    write_text(path, "".join(line + "\n" for line in lines))


def make_splits(data: DataConfig, split: SplitConfig, out: Path) -> Splits:
    """Write ``train.jsonl``, ``validation.jsonl`` (and ``heldout.jsonl`` unless the base names one) into ``out``."""
    out = Path(out)
    ds = load_records(data.path)
    if data.max_samples is not None:
        ds = ds.select(range(min(data.max_samples, len(ds))))
    n = len(ds)
    if data.validation_path:
        n_held, source = 0, "data.validation_path"
    else:
        n_held = max(1, round(n * (split.heldout_fraction or data.validation_fraction)))
        source = "carved from data.path"
    n_val = max(1, round((n - n_held) * split.validation_fraction))
    if n - n_held - n_val < 1:
        raise InputError(f"{data.path} has {n} records: too few for training, validation and held-out parts",
                         hint="use more data or lower split.validation_fraction / split.heldout_fraction")
    train, val, held = _indices(n, n_held, n_val, split.order, split.seed)
    _write_jsonl(ds, train, out / "train.jsonl")
    _write_jsonl(ds, val, out / "validation.jsonl")
    if data.validation_path:
        heldout = str(Path(data.validation_path).resolve())
    else:
        _write_jsonl(ds, held, out / "heldout.jsonl")
        heldout = str(out / "heldout.jsonl")
    splits = Splits(str(out / "train.jsonl"), str(out / "validation.jsonl"), heldout, train, val, held, source)
    write_text(out / "splits.json", json.dumps({**asdict(splits), "source": data.path}) + "\n")
    return splits


def fingerprint(path: str | Path) -> str:
    """A short content hash of a split file (part of every cell's key)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
