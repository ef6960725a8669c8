"""Per-module scores: what a scorer produces and an allocator consumes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .atomic import write_text
from .errors import InputError

SCORES_SCHEMA_VERSION = 1


class ModuleScore(BaseModel):
    """The score of one weight matrix. ``score`` may be ``inf`` or ``nan`` (Spectrum's legacy tokens)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Module name, e.g. 'model.layers.3.self_attn.q_proj'.")
    type: str = Field(description="Module type used for per-type selection, e.g. 'self_attn.q_proj'.")
    score: float
    shape: tuple[int, ...] | None = None


class Scores(BaseModel):
    """An ordered set of module scores plus where they came from (file order = layer order)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCORES_SCHEMA_VERSION
    scorer: str
    options: dict[str, Any] = Field(default_factory=dict)
    fingerprint: str | None = Field(default=None, description="Fingerprint of the scored checkpoint.")
    modules: list[ModuleScore]

    def by_name(self) -> dict[str, ModuleScore]:
        return {m.name: m for m in self.modules}

    def types(self) -> list[str]:
        """Module types in order of first appearance."""
        return list(dict.fromkeys(m.type for m in self.modules))

    def to_json(self) -> str:
        """Strict JSON: non-finite scores are written as the strings 'inf', '-inf', 'nan'."""
        data = self.model_dump(mode="python")
        for m in data["modules"]:
            if not math.isfinite(m["score"]):
                m["score"] = str(m["score"])
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    def save(self, path: Path) -> Path:
        return write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> Scores:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"scores file not found: {path}", hint="pass the JSON written by `spectra scan`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not valid JSON ({exc})", hint="re-run `spectra scan` to rewrite it") from exc
        if not isinstance(data, dict) or "modules" not in data:
            raise InputError(f"{path} is not a spectra scores file (no 'modules' key)",
                             hint="for Spectrum's own snr_results_*.json use `spectra select`")
        for m in data["modules"]:
            if isinstance(m.get("score"), str):
                m["score"] = float(m["score"])
        return cls.model_validate(data)
