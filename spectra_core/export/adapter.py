"""The ``peft-adapter`` exporter: a stock PEFT adapter directory plus the plan, groups and a model card."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from spectra_core.atomic import atomic_dir
from spectra_core.plan import AdapterPlan
from spectra_core.strategies import Exporter, RunArtifacts, StrategyOptions

from .common import adapter_parameters, base_model_name, check_adapter, groups_json, write_adapter


class PeftAdapterExporter(Exporter):
    """A stock PEFT adapter directory (mixed ranks kept) with plan.json, groups and a model card.

    ``PeftModel.from_pretrained(base, dir)`` loads it and gives the trained model's logits exactly.
    Modules that share one LoRA (a group) are stored once per member; ``spectra_groups.json``
    (group → member module names) lets spectra tie them again.
    """

    name: ClassVar[str] = "peft-adapter"
    default_dirname: ClassVar[str] = "adapter"

    class Options(StrategyOptions):
        """No options: the adapter is written as trained."""

    def export(self, run: RunArtifacts, destination: Path) -> Path:
        with atomic_dir(destination) as tmp:
            write_adapter(run, tmp)
            check_adapter(tmp, run.plan)
            run.plan.save(tmp / "plan.json")
            if run.plan.groups():
                (tmp / "spectra_groups.json").write_text(groups_json(run.plan), encoding="utf-8")
            (tmp / "README.md").write_text(model_card(run, adapter_parameters(tmp)), encoding="utf-8")
        return Path(destination)


def strategies_yaml(config: Any) -> str:
    """The run config's strategy sections (name and every option, defaults included) as YAML."""
    import yaml

    data = config.model_dump(mode="json")
    keys = ("quantizer", "scorer", "allocator", "gradient_merger", "rebalancer", "exporters")
    return yaml.safe_dump({k: data[k] for k in keys if data.get(k) is not None}, sort_keys=False)


def model_card(run: RunArtifacts, stored_parameters: int) -> str:
    """A Hugging Face style README: base model, method, targets, ranks, groups, how to load."""
    plan: AdapterPlan = run.plan
    base = base_model_name(run)
    config = run.config
    injected = plan.injected()
    by_type = Counter(m.type for m in injected)
    ranks = Counter(m.rank for m in injected)
    groups = plan.groups()
    lines = [
        "---",
        "library_name: peft",
        "tags: [spectra-qlora, lora, qlora]",
        "---",
        "",
        f"# LoRA adapter for `{base}`",
        "",
        "Trained with SpectraQLoRA: LoRA capacity placed by the spectral signal-to-noise ratio of the "
        "base weights (Spectrum-guided QLoRA).",
        "",
        f"- **Base model:** `{base}`",
        f"- **Method:** {plan.method or 'none (strategies chosen individually)'}",
        f"- **Strategies:** quantizer `{config.quantizer.name}`, scorer `{config.scorer.name}`, "
        f"allocator `{plan.allocator}`"
        + (f", gradient merger `{config.gradient_merger.name}`" if config.gradient_merger else "")
        + (f", rebalancer `{config.rebalancer.name}`" if config.rebalancer else ""),
        f"- **Adapted modules:** {len(injected)} of {len(plan.modules)} targets "
        f"({sum(m.active for m in injected)} trained)",
        f"- **Targets by type:** " + ", ".join(f"`{t}` ×{n}" for t, n in sorted(by_type.items())),
        f"- **Ranks:** " + ", ".join(f"r={r} ×{n}" for r, n in sorted(ranks.items())),
        f"- **Trainable parameters:** {plan.trainable_parameters():,} "
        f"({stored_parameters:,} stored; shared groups are stored once per member)",
        f"- **rsLoRA:** {'yes' if plan.use_rslora else 'no'}",
    ]
    if groups:
        lines.append(f"- **Groups (shared LoRA):** {len(groups)}; members listed in `spectra_groups.json`")
    lines += ["", "## Strategies and options as run", "", "```yaml", strategies_yaml(config).rstrip(), "```"]
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}")',
        'model = PeftModel.from_pretrained(base, "path/to/this/directory")',
        "```",
        "",
        "`plan.json` holds the per-module plan (rank, alpha, LR scale, tier, group, score) and its history.",
        "",
    ]
    return "\n".join(lines)
