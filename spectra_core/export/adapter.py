"""The ``peft-adapter`` exporter: a stock PEFT adapter directory plus the plan, groups and a model card;
optionally a serving-ready copy with one rank (``serving/``, see uniform.py)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from spectra_core.atomic import atomic_dir
from spectra_core.strategies import Exporter, RunArtifacts, StrategyOptions

from .card import model_card
from .common import adapter_parameters, check_adapter, groups_json, write_adapter
from .uniform import SERVING_DIR, write_uniform_adapter


class PeftAdapterExporter(Exporter):
    """A stock PEFT adapter directory (mixed ranks kept) with plan.json, groups and a model card.

    ``PeftModel.from_pretrained(base, dir)`` loads it and gives the trained model's logits exactly.
    Modules that share one LoRA (a group) are stored once per member; ``spectra_groups.json``
    (group → member module names) lets spectra tie them again. ``uniform: true`` also writes
    ``serving/``: the same function with every module zero-padded to one rank, each module's scale
    folded into ``lora_B`` and one ``lora_alpha`` (no ``rank_pattern``/``alpha_pattern``/rsLoRA), for
    servers such as vLLM that apply one ``lora_alpha / r`` to every module.
    """

    name: ClassVar[str] = "peft-adapter"
    default_dirname: ClassVar[str] = "adapter"

    class Options(StrategyOptions):
        uniform: bool = Field(default=False, description="Also write serving/: one rank, scales folded into "
                              "lora_B, one lora_alpha (for vLLM and other servers that read only r/lora_alpha).")
        uniform_rank: int | None = Field(default=None, gt=0, description="Rank of serving/ (default: the largest "
                                         "rank in the adapter); e.g. a rank your server's max_lora_rank allows.")

    def export(self, run: RunArtifacts, destination: Path) -> Path:
        with atomic_dir(destination) as tmp:
            write_adapter(run, tmp)
            check_adapter(tmp, run.plan)
            run.plan.save(tmp / "plan.json")
            if run.plan.groups():
                (tmp / "spectra_groups.json").write_text(groups_json(run.plan), encoding="utf-8")
            serving = None
            if self.options.uniform:
                (tmp / SERVING_DIR).mkdir()
                rank = write_uniform_adapter(tmp, tmp / SERVING_DIR, self.options.uniform_rank)
                serving = (rank, adapter_parameters(tmp / SERVING_DIR))
            card = model_card(run, Path(destination), adapter_parameters(tmp), serving=serving)
            (tmp / "README.md").write_text(card, encoding="utf-8")
            if serving is not None:
                (tmp / SERVING_DIR / "README.md").write_text(card, encoding="utf-8")
        return Path(destination)
