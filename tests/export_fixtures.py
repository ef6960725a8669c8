"""A tiny finished run on disk for the exporter tests: random Llama base, word-level tokenizer,
a hand-built plan (mixed ranks, one group), a perturbed peft adapter in ``final/``.

Also a minimal allocator plugin (``export-fixture``) so a run config validates while no allocator
is installed: in-process through :func:`fixture_registry`, in a subprocess through
:func:`plugin_path` (a real ``.dist-info`` with an entry point, put on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spectra_core.hookspecs import hookimpl
from spectra_core.plan import AdapterPlan, ModulePlan, PlanChange
from spectra_core.scores import ModuleScore, Scores
from spectra_core.spectral.types import module_type
from spectra_core.strategies import Allocator, TargetModule

WORDS = [f"w{i}" for i in range(200)]
PROMPTS = ["w1 w2 w3 w4 w5 w6", "w10 w20 w30 w40 w50 w60 w70 w80", "w7 w7 w7 w199 w0 w3"]
RANK8 = "model.layers.0.self_attn.q_proj"
ALPHA4 = "model.layers.1.mlp.down_proj"
FROZEN = "model.layers.1.self_attn.o_proj"
GROUP = ("model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.k_proj")


class FixtureAllocator(Allocator):
    """Every target active at rank 4 (a test fixture, not a real allocation)."""

    name = "export-fixture"

    def allocate(self, scores: Scores, targets: list[TargetModule]) -> AdapterPlan:
        return AdapterPlan(allocator=self.name, modules={
            t.name: ModulePlan(name=t.name, type=t.type, shape=(t.out_features, t.in_features),
                               active=True, rank=4, alpha=8) for t in targets})


@hookimpl
def spectra_allocators() -> list[type[Allocator]]:
    return [FixtureAllocator]


def fixture_registry() -> Any:
    """The installed plugins plus the fixture allocator."""
    from spectra_core.plugins import new_plugin_manager
    from spectra_core.registry import Registry

    reg = Registry.from_plugin_manager(*new_plugin_manager())
    reg.add_strategy("allocator", FixtureAllocator, "export_fixtures")
    return reg


def plugin_path(root: Path) -> Path:
    """A directory that, on ``PYTHONPATH`` next to ``tests/``, installs this module as a spectra plugin."""
    info = root / "spectra_export_fixtures-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: spectra-export-fixtures\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text("[spectra]\nexport_fixtures = export_fixtures\n")
    return root


def save_tiny_base(directory: Path, *, tokenizer: bool = True) -> Path:
    """A random 2-layer LlamaForCausalLM (hidden 64) and a word-level tokenizer, saved as a HF directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(directory)
    if tokenizer:
        _tokenizer().save_pretrained(directory)
    return directory


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {w: i + 4 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def build_plan(base_dir: Path) -> AdapterPlan:
    """Every linear layer but the head: rank 4 / alpha 8, one at rank 8, one with alpha 4, one frozen,
    two k_proj sharing a group; two history entries."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    modules = {}
    for i, (name, mod) in enumerate((n, m) for n, m in model.named_modules()
                                    if isinstance(m, torch.nn.Linear) and n != "lm_head"):
        modules[name] = ModulePlan(
            name=name, type=module_type(name), shape=(mod.out_features, mod.in_features),
            active=name != FROZEN, rank=8 if name == RANK8 else 4, alpha=4 if name == ALPHA4 else 8,
            group="g0" if name in GROUP else None, score=0.1 * (i % 5) + 0.05, tier="high" if i % 2 else "low")
    history = [
        PlanChange(step=0, strategy="fixture-merger", module=g, field="group", before=None, after="g0",
                   reason="gradients agree") for g in GROUP
    ] + [PlanChange(step=5, strategy="fixture-rebalancer", module=FROZEN, field="active", before=True,
                    after=False, reason="low SNR after training")]
    return AdapterPlan(method=None, allocator="export-fixture", modules=modules, history=history)


def scores_of(plan: AdapterPlan) -> Scores:
    return Scores(scorer="random", modules=[ModuleScore(name=m.name, type=m.type, score=m.score, shape=m.shape)
                                            for m in plan.modules.values()])


def config_data(base_dir: Path, run_dir: Path, exporters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"model": {"source": str(base_dir)}, "quantizer": {"name": "none"}, "scorer": {"name": "random"},
            "allocator": {"name": "export-fixture"}, "output_dir": str(run_dir),
            "exporters": exporters if exporters is not None else [{"name": "peft-adapter"}, {"name": "report"}]}


def live_model(base_dir: Path, plan: AdapterPlan) -> Any:
    """The float base with the plan's LoRA, lora_B perturbed, and each group's LoRA tied (shared)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from spectra_core.adapters import lora_config

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, lora_config(plan))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    lora = {n: m for n, m in model.named_modules() if n.removeprefix("base_model.model.") in GROUP}
    first, second = (lora[n] for n in sorted(lora))
    second.lora_A["default"].weight = first.lora_A["default"].weight
    second.lora_B["default"].weight = first.lora_B["default"].weight
    return model.eval()


@dataclass
class FixtureRun:
    base_dir: Path
    run_dir: Path
    plan: AdapterPlan
    model: Any
    registry: Any


def make_run(root: Path, *, tokenizer: bool = True, exporters: list[dict[str, Any]] | None = None) -> FixtureRun:
    """Write a complete run directory under ``root`` (base model in ``root/base``)."""
    base_dir = save_tiny_base(root / "base", tokenizer=tokenizer)
    run_dir = root / "run"
    plan = build_plan(base_dir)
    model = live_model(base_dir, plan)
    model.save_pretrained(run_dir / "final")
    plan.save(run_dir / "plan.json")
    scores_of(plan).save(run_dir / "scores.json")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_data(base_dir, run_dir, exporters)))
    metrics = [{"step": 0, "eval_loss": 5.6}, {"step": 1, "loss": 5.7, "lr": 1e-4}, {"step": 2, "loss": 5.1},
               {"step": 3, "loss": 4.4}, {"step": 3, "eval_loss": 4.9}]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\nnot json\n")
    return FixtureRun(base_dir, run_dir, plan, model, fixture_registry())


def logits(model: Any, base_dir: Path) -> Any:
    """Logits of the fixed prompts (batch padded on the right)."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits
