"""Result files: ours (strict Scores JSON) and the Spectrum reference's flat/nested JSON and YAML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from spectra_core.atomic import write_text
from spectra_core.errors import InputError
from spectra_core.scores import ModuleScore, Scores
from spectra_core.spectral.selection import Selection

Format = Literal["spectra", "flat", "nested"]
_HINT = "pass a scores.json written by `spectra scan` or a Spectrum snr_results_*.json"


def detect_format(data: object) -> Format | None:
    """Which of the three layouts a parsed JSON document has (None: none of them)."""
    if isinstance(data, dict) and "modules" in data and "scorer" in data:
        return "spectra"
    if not isinstance(data, dict) or not data:
        return None
    values = list(data.values())
    if all(isinstance(v, dict) and "snr" in v and "type" in v for v in values):
        return "flat"
    if all(isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()) for v in values):
        return "nested"
    return None


def load_scores(path: Path) -> Scores:
    """Read any supported result file; unreadable, empty or unknown files raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"scores file not found: {path}", hint=_HINT)
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise InputError(f"{path} is empty ({path.stat().st_size} bytes): no scores to read", hint=_HINT)
    try:
        data = json.loads(text)  # Python's json accepts the reference's Infinity/NaN tokens
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})", hint=_HINT) from exc
    fmt = detect_format(data)
    if fmt == "spectra":
        return Scores.load(path)
    if fmt == "flat":
        modules = [ModuleScore(name=k, type=v["type"], score=float(v["snr"])) for k, v in data.items()]
    elif fmt == "nested":
        modules = [ModuleScore(name=k, type=t, score=float(s)) for t, group in data.items() for k, s in group.items()]
    else:
        raise InputError(f"{path} is JSON but not a scores file (unknown layout)", hint=_HINT)
    if not modules:
        raise InputError(f"{path} contains no module scores", hint=_HINT)
    return Scores(scorer="spectrum", options={"source_format": fmt}, modules=modules)


def to_flat(scores: Scores) -> str:
    """The reference's flat layout: {name: {"snr": x, "type": t}}, with Infinity/NaN tokens."""
    data = {m.name: {"snr": m.score, "type": m.type} for m in scores.modules}
    return json.dumps(data, indent=4) + "\n"


def to_nested(scores: Scores) -> str:
    """The reference's nested layout: {type: {name: x}} per type, sorted by score descending."""
    data = {t: {m.name: m.score for m in sorted((m for m in scores.modules if m.type == t),
                                                key=lambda m: m.score, reverse=True)}
            for t in scores.types()}
    return json.dumps(data, indent=4) + "\n"


def unfrozen_yaml(selection: Selection) -> str:
    """The reference's unfrozen-parameters YAML, byte for byte."""
    lines = ["unfrozen_parameters:", "- ^lm_head.weight$", "- ^model.embed_tokens.weight$"]
    for type_, members in selection.items():
        lines.append(f"# {type_} layers")
        lines.extend(f"- {m.name}" for m in members)
    return "\n".join(lines) + "\n"


def write_flat(scores: Scores, path: Path) -> Path:
    return write_text(Path(path), to_flat(scores))


def write_nested(scores: Scores, path: Path) -> Path:
    return write_text(Path(path), to_nested(scores))


def write_unfrozen_yaml(selection: Selection, path: Path) -> Path:
    return write_text(Path(path), unfrozen_yaml(selection))

