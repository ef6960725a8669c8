"""The exported adapter's model card (README.md): a loadable base, the base it was trained against,
which file is for what, and a snippet that runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectra_core.config import BUNDLED_PREFIX
from spectra_core.errors import InputError
from spectra_core.plan import AdapterPlan
from spectra_core.strategies import RunArtifacts

from .uniform import SERVING_DIR


@dataclass
class BaseModelInfo:
    """Where the base comes from: the Hub id it is known by (if any) and the local directory training read."""

    source: str
    hub_id: str | None
    local_dir: Path | None
    auto_class: str = "AutoModelForCausalLM"  # the transformers class that loads it (automodel.model_class)

    @property
    def loadable(self) -> str:
        """What ``from_pretrained`` should be given here: the local directory, else the hub id."""
        return str(self.local_dir) if self.local_dir is not None else str(self.hub_id or self.source)


def base_model_info(run: RunArtifacts) -> BaseModelInfo:
    """The run's base as a hub id (bundled models: the checkpoint their GGUF was made from) and local dir."""
    from spectra_core.models import BUNDLED_HUB_IDS

    source = str(run.config.model.source)
    if source.startswith(BUNDLED_PREFIX):
        hub_id = BUNDLED_HUB_IDS.get(source[len(BUNDLED_PREFIX):])
    else:
        hub_id = None if Path(source).expanduser().exists() else source
    try:
        local_dir: Path | None = Path(run.base_model_dir()).resolve()
    except InputError:
        local_dir = None
    if local_dir is None:
        return BaseModelInfo(source, hub_id, local_dir)
    from transformers import AutoConfig

    from spectra_core.automodel import model_class

    config = AutoConfig.from_pretrained(local_dir, trust_remote_code=run.config.model.trust_remote_code)
    return BaseModelInfo(source, hub_id, local_dir, model_class(config).__name__)


def trained_against(run: RunArtifacts) -> str:
    """One sentence: the form of the base the adapter's weights were trained on."""
    q = run.config.quantizer
    if q.name == "bnb-nf4":
        double = "with" if q.options.double_quant else "without"
        return (f"the **4-bit NF4** quantization of this base (bitsandbytes, {double} double quantization, "
                f"compute dtype `{q.options.compute_dtype}`): load it that way to reproduce the trained model")
    if q.name == "torchao-nf4":
        return ("the **4-bit NF4** quantization of this base made by torchao (`NF4Tensor` weights); transformers "
                "cannot load that form directly — `spectra generate RUN_DIR` or the `merged` export give the exact "
                "model, the float base below is close but not identical")
    return f"the unquantized base (quantizer `{q.name}`)"


def load_snippet(run: RunArtifacts, base: BaseModelInfo, adapter: Path) -> list[str]:
    """Python that loads the base as training saw it (when transformers can) plus this adapter, and generates."""
    q = run.config.quantizer
    hub = f'  # or "{base.hub_id}" from the Hub' if base.hub_id and base.loadable != base.hub_id else ""
    lines = ["```python", "import torch", "from peft import PeftModel",
             f"from transformers import {base.auto_class}, AutoTokenizer"
             + (", BitsAndBytesConfig" if q.name == "bnb-nf4" else ""), "",
             f'base_id = "{base.loadable}"{hub}', f'adapter_dir = "{adapter}"']
    if q.name == "bnb-nf4":
        compute = ("torch.bfloat16 if torch.cuda.is_available() else torch.float32"
                   if q.options.compute_dtype == "auto" else f"torch.{q.options.compute_dtype}")
        lines += [f"compute = {compute}",
                  'quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",',
                  f"                           bnb_4bit_use_double_quant={q.options.double_quant}, "
                  "bnb_4bit_compute_dtype=compute)",
                  f"base = {base.auto_class}.from_pretrained(base_id, quantization_config=quant, dtype=compute,",
                  '    device_map="auto" if torch.cuda.is_available() else "cpu")']
    else:
        lines.append(f"base = {base.auto_class}.from_pretrained(base_id, dtype=torch.float32)")
    lines += ["model = PeftModel.from_pretrained(base, adapter_dir).eval()",
              "tokenizer = AutoTokenizer.from_pretrained(base_id)",
              'inputs = tokenizer("In the beginning", return_tensors="pt").to(model.device)',
              "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20, do_sample=False)[0]))",
              "```"]
    return lines


def init_line(plan: AdapterPlan) -> str:
    """How the LoRA weights started: what a user needs to know before reusing or re-initialising them."""
    init = plan.init
    if init.name == "eva":
        return (f"peft EVA: each A from the SVD of the module's input activations on {init.batches} training "
                "batches, ranks redistributed by explained variance (the ranks above are the result)")
    if init.name == "loftq":
        return ("peft LoftQ: every adapted module, frozen ones too, started as the rank-r correction of its 4-bit "
                "quantization error, and the adapter stores those corrections: load it whole, on the 4-bit base")
    return "peft's default (A random, B = 0)"


def strategies_yaml(config: Any) -> str:
    """The run config's strategy sections (name and every option, defaults included) as YAML."""
    import yaml

    data = config.model_dump(mode="json")
    keys = ("quantizer", "scorer", "allocator", "gradient_merger", "rebalancer", "exporters")
    return yaml.safe_dump({k: data[k] for k in keys if data.get(k) is not None}, sort_keys=False)


def model_card(run: RunArtifacts, destination: Path, stored_parameters: int, *,
               serving: tuple[int, int] | None = None) -> str:
    """A Hugging Face style README. ``serving``: (rank, stored parameters) of ``serving/`` when written."""
    plan: AdapterPlan = run.plan
    base = base_model_info(run)
    config = run.config
    injected = plan.injected()
    by_type = Counter(m.type for m in injected)
    ranks = Counter(m.rank for m in injected)
    groups = plan.groups()
    adapter = Path(destination).resolve()
    named = base.hub_id or base.loadable
    lines = ["---", "library_name: peft", *([f"base_model: {base.hub_id}"] if base.hub_id else []),
             "tags: [spectra-qlora, lora, qlora]", "---", "",
             f"# LoRA adapter for `{named}`", "",
             "Trained with SpectraQLoRA: LoRA capacity placed by the spectral signal-to-noise ratio of the "
             "base weights (Spectrum-guided QLoRA).", "",
             f"- **Base model:** `{named}`"
             + (f" (local copy used for training: `{base.local_dir}`)" if base.local_dir and named != str(base.local_dir)
                else ""),
             f"- **Trained against:** {trained_against(run)}."]
    if base.source.startswith(BUNDLED_PREFIX):
        lines.append(f"- **Note:** spectra's bundled `{base.source}` is the Hub model's Q4_1 GGUF dequantized to float; "
                     "the Hub checkpoint's own weights differ slightly from it.")
    lines += [
        f"- **Method:** {plan.method or 'none (strategies chosen individually)'}",
        f"- **Strategies:** quantizer `{config.quantizer.name}`, scorer `{config.scorer.name}`, "
        f"allocator `{plan.allocator}`"
        + (f", gradient merger `{config.gradient_merger.name}`" if config.gradient_merger else "")
        + (f", rebalancer `{config.rebalancer.name}`" if config.rebalancer else ""),
        f"- **Adapted modules:** {len(injected)} of {len(plan.modules)} targets "
        f"({sum(m.active for m in injected)} trained)",
        "- **Targets by type:** " + ", ".join(f"`{t}` ×{n}" for t, n in sorted(by_type.items())),
        "- **Ranks:** " + ", ".join(f"r={r} ×{n}" for r, n in sorted(ranks.items())),
        f"- **Trainable parameters:** {plan.trainable_parameters():,} "
        f"({stored_parameters:,} stored; shared groups are stored once per member)",
        f"- **rsLoRA:** {'yes' if plan.use_rslora else 'no'}",
        f"- **LoRA init:** {init_line(plan)}",
    ]
    if groups:
        lines.append(f"- **Groups (shared LoRA):** {len(groups)}; members listed in `spectra_groups.json`")
    lines += ["", "## Strategies and options as run", "", "```yaml", strategies_yaml(config).rstrip(), "```"]
    lines += ["", "## Files", "", "| file | use it for |", "|---|---|",
              "| `adapter_config.json`, `adapter_model.safetensors` | the adapter exactly as trained, for peft / "
              "transformers (`PeftModel.from_pretrained`); per-module ranks and alphas in `rank_pattern` / "
              "`alpha_pattern` |"]
    if serving is not None:
        lines.append(f"| `{SERVING_DIR}/` | the same function at one rank r={serving[0]} ({serving[1]:,} parameters "
                     "stored): zero-padded, each module's scale folded into `lora_B`, `lora_alpha = r`, no patterns — "
                     "for vLLM and other servers or converters that read only `r` / `lora_alpha` |")
    lines.append("| `plan.json` | the per-module plan (rank, alpha, LR scale, tier, group, score) and its history |")
    if groups:
        lines.append("| `spectra_groups.json` | which modules share one LoRA (spectra re-ties them on load) |")
    lines += ["", "## Load", "", *load_snippet(run, base, adapter), ""]
    if serving is not None:
        lines += ["## Serve", "", "```bash",
                  f"vllm serve {named} --enable-lora --max-lora-rank {serving[0]} "
                  f"--lora-modules spectra={adapter / SERVING_DIR}", "```", "",
                  "vLLM applies one scale, `lora_alpha / r`, to every module and ignores `rank_pattern` / "
                  f"`alpha_pattern`: give it `{SERVING_DIR}/`, never the mixed-rank files. "
                  "It loads the base in float unless told to quantize it; the adapter was trained against the form "
                  "named above.", ""]
    return "\n".join(lines)
