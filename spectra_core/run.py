"""A training run on disk, as exporters and ``spectra export RUN_DIR`` see it.

Run directory layout (written by the trainer):

    run_dir/
      config.yaml       the resolved config the run used (resume refuses a different one)
      scores.json       the scores the plan came from
      plan.json         the adapter plan, with its history
      metrics.jsonl     one JSON object per logged step / evaluation
      checkpoints/step-00000050/   resumable state (safetensors + JSON only, never pickle)
      final/            the trained adapter: a stock PEFT adapter directory
      exports/          what the exporters wrote
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError
from .plan import AdapterPlan
from .scores import Scores


def check_final_adapter(final: Path) -> None:
    """Refuse a damaged ``final/`` (a truncated or corrupt adapter file) before anything is exported."""
    from .spectral.safetensors_io import read_header

    weights = final / "adapter_model.safetensors"
    if not weights.is_file():
        return  # the exporters name what is missing
    try:
        read_header(weights)
    except InputError as exc:
        raise InputError(f"the run's trained adapter is damaged: {exc.message}",
                         hint="resume the run (`spectra train CONFIG --resume`) to write final/ again from its "
                              "last checkpoint, or retrain it") from None


@dataclass
class Run:
    run_dir: Path
    config: Any
    plan: AdapterPlan
    scores: Scores | None = None
    model: Any = None  # the live peft model when the run was just trained
    registry: Any = None
    _tokenizer: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, run_dir: Path, *, registry: Any = None) -> Run:
        from .config import load_config

        run_dir = Path(run_dir)
        for required in ("config.yaml", "plan.json", "final"):
            if not (run_dir / required).exists():
                raise InputError(f"{run_dir} is not a finished spectra run (missing {required})",
                                 hint="pass the output_dir of a completed `spectra train`, or resume it with --resume")
        check_final_adapter(run_dir / "final")
        data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        config = load_config(data=data, registry=registry)
        scores = Scores.load(run_dir / "scores.json") if (run_dir / "scores.json").is_file() else None
        return cls(run_dir, config, AdapterPlan.load(run_dir / "plan.json"), scores, registry=registry)

    def base_model_dir(self) -> Path:
        from .models import resolve_model_dir

        return resolve_model_dir(self.config.model)

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.base_model_dir())
        return self._tokenizer

    def peft_model(self) -> Any:
        """The trained model: the live one, or base + ``final/`` adapter (groups re-tied)."""
        if self.model is None:
            from .training.modeling import load_trained_model

            self.model = load_trained_model(self)
        return self.model
