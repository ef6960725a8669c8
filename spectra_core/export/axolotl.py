"""The ``axolotl`` exporter: an axolotl YAML that trains the run's plan (Spectrum selection × QLoRA).

axolotl's ``unfrozen_parameters`` (its Spectrum integration) is for full fine-tuning only; this file
instead names the exact active modules in ``lora_target_modules`` with their ranks and alphas in
``lora_rank_pattern`` / ``lora_alpha_pattern``, which axolotl forwards to ``peft.LoraConfig``
(``rank_pattern`` / ``alpha_pattern``). The key mapping:

    lora_r, lora_alpha          → LoraConfig(r=, lora_alpha=)  (the most common rank / alpha)
    lora_target_modules         → target_modules               (every active module, full name)
    lora_rank_pattern           → rank_pattern                 (modules whose rank differs, exact regex)
    lora_alpha_pattern          → alpha_pattern
    peft_use_rslora             → use_rslora

The data, learning rate, schedule and steps of the run are written as a starting point. What axolotl
cannot express is listed in the file's header: per-module LR scales, shared-LoRA groups, LoRA on
frozen modules, and plan changes made during training (the YAML holds the final plan).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import yaml

from spectra_core.atomic import write_text
from spectra_core.errors import InputError
from spectra_core.plan import AdapterPlan
from spectra_core.strategies import Exporter, RunArtifacts, StrategyOptions

from .card import base_model_info

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class AxolotlExporter(Exporter):
    """An axolotl config (YAML) reproducing the plan: qlora, exact target modules, rank/alpha patterns."""

    name: ClassVar[str] = "axolotl"
    default_dirname: ClassVar[str] = "axolotl.yaml"

    class Options(StrategyOptions):
        """No options: the plan, data and training section of the run decide the file."""

    def export(self, run: RunArtifacts, destination: Path) -> Path:
        config, caveats = axolotl_config(run)
        header = ["# axolotl config written by SpectraQLoRA from the run in " + str(run.run_dir),
                  "# Train with: axolotl train " + Path(destination).name,
                  *(f"# NOT carried over: {c}" for c in caveats)]
        body = yaml.safe_dump(config, sort_keys=False, width=120)
        return write_text(Path(destination), "\n".join(header) + "\n" + body)


def _int_alpha(value: float, where: str) -> int:
    if float(value).is_integer() and value > 0:
        return int(value)
    raise InputError(f"{where}: lora_alpha {value} is not a positive integer, which axolotl requires",
                     hint="use integer alphas in the allocator options, or use the peft-adapter export directly")


def lora_section(plan: AdapterPlan) -> dict[str, Any]:
    """The axolotl LoRA keys for the plan's active modules (the ones that train)."""
    active = [m for m in plan.active() if m.rank > 0]
    if not active:
        raise InputError("the plan trains no module: there is nothing for axolotl to adapt",
                         hint="check the run's allocator settings")
    ranks = [m.rank for m in active]
    alphas = [m.alpha for m in active]
    rank = max(ranks, key=ranks.count)
    alpha = max(alphas, key=alphas.count)
    return {
        "lora_r": rank,
        "lora_alpha": _int_alpha(alpha, "the plan"),
        "lora_dropout": 0.0,
        "lora_target_modules": [m.name for m in active],
        "lora_rank_pattern": {re.escape(m.name): m.rank for m in active if m.rank != rank},
        "lora_alpha_pattern": {re.escape(m.name): _int_alpha(m.alpha, m.name) for m in active if m.alpha != alpha},
        "peft_use_rslora": plan.use_rslora,
    }


def _dataset(data: Any) -> dict[str, Any]:
    """An axolotl ``datasets`` entry for spectra's data section (local files; a hub id stays a path)."""
    path = str(data.path)
    suffix = Path(path).suffix.lower().lstrip(".")
    ds_type = {"txt": "text", "jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(suffix)
    entry: dict[str, Any] = {"path": path, **({"ds_type": ds_type} if ds_type else {})}
    if data.format == "seq2seq":
        raise InputError("the axolotl exporter writes configs for causal LMs; this run trained an encoder-decoder "
                         "on data.format: seq2seq, which an axolotl config cannot reproduce",
                         hint="export the peft-adapter (task type SEQ_2_SEQ_LM) or merged model instead")
    if data.format == "text":
        return entry | {"type": "completion", "field": "text" if ds_type == "text" else data.text_field}
    if data.format == "instruction":
        return entry | {"type": {"field_instruction": data.prompt_field, "field_output": data.response_field,
                                 "format": "{instruction}", "no_input_format": "{instruction}"}}
    return entry | {"type": "chat_template", "field_messages": data.messages_field}


def axolotl_config(run: RunArtifacts) -> tuple[dict[str, Any], list[str]]:
    """The axolotl config for the run and what it cannot carry over (one line each)."""
    cfg, plan = run.config, run.plan
    base = base_model_info(run)
    quantized = cfg.quantizer.name in ("bnb-nf4", "torchao-nf4")
    out: dict[str, Any] = {"base_model": base.hub_id or base.loadable}
    if quantized:
        double = getattr(cfg.quantizer.options, "double_quant", True)
        out |= {"load_in_4bit": True, "adapter": "qlora",
                "bnb_config_kwargs": {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": double}}
    else:
        out |= {"adapter": "lora"}
    out |= lora_section(plan)
    t = cfg.training
    if cfg.data is not None:
        out["datasets"] = [_dataset(cfg.data)]
        out["sequence_len"] = cfg.data.max_length
        if cfg.data.validation_path:
            out["test_datasets"] = [_dataset(cfg.data.model_copy(update={"path": cfg.data.validation_path}))]
        else:
            out["val_set_size"] = cfg.data.validation_fraction
    out |= {"micro_batch_size": t.batch_size, "gradient_accumulation_steps": t.gradient_accumulation,
            "max_steps": t.max_steps, "learning_rate": t.learning_rate, "lr_scheduler": SCHEDULES[t.schedule],
            "warmup_steps": t.warmup_steps, "weight_decay": t.weight_decay, "optimizer": "adamw_torch",
            "gradient_checkpointing": t.gradient_checkpointing, "seed": t.seed, "bf16": "auto",
            "output_dir": f"./outputs/{Path(run.run_dir).name}-axolotl"}
    if t.max_grad_norm is not None:
        out["max_grad_norm"] = t.max_grad_norm
    return out, caveats(run)


def caveats(run: RunArtifacts) -> list[str]:
    """What of the run the axolotl config does not reproduce."""
    cfg, plan = run.config, run.plan
    out = []
    if cfg.quantizer.name == "torchao-nf4":
        out.append("torchao NF4 quantization (axolotl loads the base with bitsandbytes NF4 instead)")
    scales = sorted({m.lr_scale for m in plan.active()})
    if scales != [1.0]:
        out.append(f"per-module learning-rate scales {scales} (axolotl trains every LoRA at one learning rate)")
    if plan.groups():
        out.append(f"{len(plan.groups())} shared-LoRA groups (axolotl trains each member's own LoRA)")
    frozen = [m for m in plan.injected() if not m.active]
    if frozen:
        out.append(f"{len(frozen)} frozen LoRA layers on inactive modules (left out: they do not train)")
    if cfg.rebalancer is not None:
        out.append(f"rebalancer {cfg.rebalancer.name} (this file holds the plan as it was after training)")
    if cfg.data is not None and cfg.data.format == "text" and cfg.data.packing:
        out.append("spectra's text packing (set sample_packing in axolotl if you want packed sequences)")
    return out
