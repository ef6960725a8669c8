"""metrics.jsonl (one JSON object per logged step or evaluation) and the run's trackers (accelerate's
tracker API: TensorBoard, W&B, MLflow, ... as ``training.report_to`` names them)."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRACKER_DIR = "tensorboard"  # accelerate's logging_dir inside the run directory (TensorBoard event files)
PROJECT = "spectra"
# accelerate tracker name -> the module it needs
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                   "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
                   "trackio": "trackio"}


def resolve_trackers(report_to: list[str] | None, run_dir: Path) -> list[str]:
    """The trackers to start: ``report_to``, or TensorBoard when installed; W&B offline without an API key.

    A named tracker that is unknown or not installed is an error (named, with the fix), never skipped.
    """
    from ..errors import ConfigError

    if report_to is None:
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []
    for name in report_to:
        if name not in TRACKER_MODULES:
            raise ConfigError(f"training.report_to: unknown tracker {name!r}",
                              hint=f"use any of {', '.join(TRACKER_MODULES)}, or [] for none")
        if importlib.util.find_spec(TRACKER_MODULES[name]) is None:
            raise ConfigError(f"training.report_to names {name!r}, but {TRACKER_MODULES[name]} is not installed",
                              hint=f"pip install {TRACKER_MODULES[name]}, or remove it from training.report_to")
    if "wandb" in report_to and not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
        log.warning("W&B: no WANDB_API_KEY, logging offline to %s/wandb (upload later with `wandb sync`)", run_dir)
    return list(dict.fromkeys(report_to))


def tracker_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The run config flattened to the scalar values trackers accept (lists and None as text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= tracker_config(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class MetricsLog:
    """Appends records to ``metrics.jsonl`` and sends their numbers to the accelerator's trackers;
    on resume, records after the checkpoint step are dropped."""

    def __init__(self, path: Path, *, enabled: bool = True, resume_step: int | None = None,
                 accelerator: Any = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.accelerator = accelerator
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                   and not isinstance(v, bool) and math.isfinite(v)}
        if self.accelerator is not None and self.accelerator.trackers and numbers:
            self.accelerator.log(numbers, step=record.get("step", 0))  # main process only (accelerate)
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")

    def close(self) -> None:
        """Finish each tracker (not ``Accelerator.end_training``, which also ends the process group)."""
        for tracker in getattr(self.accelerator, "trackers", None) or []:
            tracker.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
