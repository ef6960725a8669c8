"""The architecture matrix: tiny random models of every family (arch_fixtures) through scan, plan,
training (2 steps), export, and a stock-peft load whose logits the merged model matches; MoE experts
adapted one LoRA per expert and quantized by bnb-nf4; encoder-decoders (T5, BART) on seq2seq data with
targets in both stacks; refusals exit 2 with the reason."""

from __future__ import annotations

import subprocess

import pytest
import torch
from arch_fixtures import (
    ARCHITECTURES,
    BNB_END_TO_END,
    METHOD_ARCHITECTURES,
    METHODS,
    MOE_ARCHITECTURES,
    SEQ2SEQ_ARCHITECTURES,
    load_stock,
    make_model,
)
from train_fixtures import cli_env, config_dict, instruction_rows, spectra_cmd, write_jsonl, write_text

from spectra_core.config import TargetsConfig
from spectra_core.expert_plan import carries_lora, split
from spectra_core.models import survey_model
from spectra_core.targets import plan_targets
from spectra_core.pipeline import Pipeline

PROMPT = [[5, 17, 42, 99, 7, 3, 250, 11]]
DECODER_PROMPT = [[3, 8, 21, 64]]  # decoder inputs of an encoder-decoder (starting from its start token, pad)
TOLERANCE = 1e-4  # max |Δlogit| / max |logit|, merged model against stock peft on the float base


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """arch -> its training data: plain text for causal LMs, input/target pairs for encoder-decoders."""
    root = tmp_path_factory.mktemp("arch-data")
    text = write_text(root / "train.txt", n=60)
    pairs = write_jsonl(root / "pairs.jsonl", [{"input": r["prompt"], "target": r["response"]}
                                                for r in instruction_rows(40)])
    return lambda arch: pairs if arch in SEQ2SEQ_ARCHITECTURES else text


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch-models")
    made: dict[str, object] = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = make_model(arch, root / arch)
        return made[arch]

    return get


def arch_config(arch, model_dir, corpus, out, **training):
    """config_dict on ``arch``'s data (``data.format: seq2seq`` for an encoder-decoder)."""
    cfg = config_dict(model_dir, corpus(arch), out, **training)
    if arch in SEQ2SEQ_ARCHITECTURES:
        cfg["data"]["format"] = "seq2seq"
    return cfg


def matrix_config(arch, model_dir, corpus, out, quantizer: str = "none", **extra):
    cfg = arch_config(arch, model_dir, corpus, out, max_steps=2, eval_every=2, save_every=2, batch_size=2)
    cfg["scorer"] = {"name": "spectrum"}
    cfg["quantizer"] = {"name": quantizer}
    cfg["allocator"]["options"] = {"rank": 2, "alpha": 4, "top_fraction": 1.0}
    cfg["exporters"] = [{"name": "peft-adapter"}, {"name": "merged"}]
    cfg.update(extra)
    return cfg


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def logits(model) -> torch.Tensor:
    decoder = {"decoder_input_ids": torch.tensor(DECODER_PROMPT)} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        return model(input_ids=torch.tensor(PROMPT), **decoder).logits.float()


def expert_deltas(model) -> dict[str, torch.Tensor]:
    """Per fused expert parameter of a peft model: the norm of each expert's LoRA delta."""
    from peft.tuners.lora.layer import ParamWrapper

    return {f"{n.removeprefix('base_model.model.').replace('.base_layer', '')}.{m.parameter_name}":
            m.get_delta_weight("default").flatten(1).norm(dim=1)
            for n, m in model.named_modules() if isinstance(m, ParamWrapper)}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_trains_exports_and_stock_peft_matches_merged(arch, models, corpus, tmp_path):
    model_dir = models(arch)
    pipe = Pipeline.from_dict(matrix_config(arch, model_dir, corpus, tmp_path / "run"))
    scores = pipe.scan(progress=False)
    plan = pipe.plan(scores)
    assert plan.modules and all(m.active for m in plan.modules.values())
    run = pipe.train(plan, scores=scores)
    paths = pipe.export(run)

    base = load_stock(model_dir)
    before = logits(base)
    check_against_stock_peft(arch, base, run.run_dir / "final", paths["merged"], plan)
    assert relative_error(logits(base), before) > 1e-6  # the adapter (now on base) changes the model


def check_against_stock_peft(arch, base, final, merged_dir, plan, quantized: bool = False,
                             every_expert: bool = True) -> None:
    """The merged export equals stock peft's adapter on ``base`` (≤ TOLERANCE); every expert was trained.
    ``quantized``: ``base`` is spectra's bnb-nf4 base, whose fused experts are 4-bit once peft wrapped
    them (``adapters.load``: stock ``PeftModel.from_pretrained``, then the experts quantized).
    ``every_expert``: every active fused tensor has all experts trained; else no tensor is partly trained."""
    from peft import PeftModel

    from spectra_core.adapters import load

    adapted = (load(base, final, plan) if quantized else PeftModel.from_pretrained(base, final)).eval()
    merged = load_stock(merged_dir)
    error = relative_error(logits(merged), logits(adapted))
    assert error <= TOLERANCE, f"{arch}: merged vs stock peft, relative error {error:.2e}"
    if arch in MOE_ARCHITECTURES:
        deltas = expert_deltas(adapted)
        norms = {m.name: float(deltas[split(m.name)[0]][split(m.name)[1]]) if split(m.name)[0] in deltas else 0.0
                 for m in plan.modules.values() if m.kind == "expert"}
        trained = [m.name for m in plan.modules.values() if m.kind == "expert" and m.active and m.rank > 0]
        assert trained, "no expert was planned to train"
        idle = [name for name in norms if not carries_lora(plan, plan.modules[name]) and norms[name] != 0]
        assert not idle, f"experts without a LoRA in the plan have an update: {idle}"
        dead = [name for name in trained if norms[name] == 0]
        if not every_expert:  # a method's rebalancer may switch experts on at the end (their LoRA starts at zero)
            assert len(dead) < len(trained), "no expert was trained"
        else:
            assert not dead, f"experts without a LoRA update after training: {dead}"


@pytest.mark.parametrize("arch", BNB_END_TO_END)
def test_bnb_run_merges_exactly_onto_its_4bit_base(arch, models, corpus, tmp_path):
    """On a bnb-nf4 base (Conv1D, FalconLinear and experts in 4-bit) the merged export equals stock
    peft's adapter on the same 4-bit base."""
    from spectra_core.builtins.quantizers import BnbNF4Quantizer

    model_dir = models(arch)
    pipe = Pipeline.from_dict(matrix_config(arch, model_dir, corpus, tmp_path / "run", quantizer="bnb-nf4"))
    run = pipe.train()
    paths = pipe.export(run)
    check_against_stock_peft(arch, BnbNF4Quantizer().load(model_dir), run.run_dir / "final", paths["merged"],
                             run.plan, quantized=True)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", METHOD_ARCHITECTURES)
def test_method_runs_end_to_end(arch, method, models, corpus, tmp_path):
    """Each method (its own quantizer, scorer, allocator, merger/rebalancer) on llama, gpt2, mixtral and t5."""
    from spectra_core.builtins.quantizers import BnbNF4Quantizer

    model_dir = models(arch)
    cfg = arch_config(arch, model_dir, corpus, tmp_path / "run", max_steps=4, eval_every=2, save_every=2, batch_size=2)
    cfg = {k: v for k, v in cfg.items() if k not in ("quantizer", "scorer", "allocator")} | {"method": method}
    cfg["allocator"] = {"options": METHOD_ALLOCATOR[method]}
    pipe = Pipeline.from_dict(cfg)
    run = pipe.train()
    paths = pipe.export(run)
    check_against_stock_peft(arch, BnbNF4Quantizer().load(model_dir), run.run_dir / "final", paths["merged"],
                             run.plan, quantized=True, every_expert=False)


# 2-layer models: a larger share than the methods' defaults, so every type trains something
METHOD_ALLOCATOR = {"hybrid": {"top_fraction": 0.5, "rank": 2, "alpha": 4},
                    "alors": {},
                    "sgm": {"top_fraction": 1.0, "rank": 2, "alpha": 4}}


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_moe_targets_scan_names_and_families(arch, models):
    """Experts are fused-parameter targets whose scan names are the loaded model's; routers and 1×H
    gates are skipped with the reason; nothing is left unclassified."""
    from transformers import AutoModelForCausalLM

    model_dir = models(arch)
    survey = survey_model(model_dir, TargetsConfig())
    experts = [t for t in survey.targets if t.kind == "parameter"]
    loaded = dict(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters())
    assert experts and all(t.name in loaded and loaded[t.name].ndim == 3 for t in experts)
    assert {t.type for t in experts} == {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
    skipped = {f.reason.split(":")[0] for f in survey.families if not f.adapted}
    assert "router" in skipped
    if arch == "qwen2_moe":
        assert "1×H gate" in skipped
    assert 0.5 < survey.adaptable_fraction() < 1


@pytest.mark.parametrize("arch", ["mixtral", "gpt2", "falcon"])
def test_bnb_quantizes_every_target(arch, models):
    """bnb-nf4 leaves no adapted weight in float: Conv1D, FalconLinear and fused experts are 4-bit too."""
    import bitsandbytes as bnb

    from spectra_core.builtins.quantizers import BnbNF4Quantizer

    from spectra_core.adapters import inject, lora_layers
    from spectra_core.plan import AdapterPlan, ModulePlan

    model_dir = models(arch)
    survey = survey_model(model_dir, TargetsConfig())
    plan = AdapterPlan(allocator="test", modules={t.name: ModulePlan(
        name=t.name, type=t.type, kind=t.kind, shape=t.shape(), active=True, rank=2, alpha=4.0)
        for t in plan_targets(survey.targets)})
    layers = lora_layers(inject(BnbNF4Quantizer().load(model_dir), plan))
    assert sorted(layers) == sorted(t.name for t in survey.targets)
    for t in survey.targets:
        base = layers[t.name].get_base_layer()
        if t.kind == "parameter":
            name = t.name.rpartition(".")[2]
            assert name in base.parametrizations, f"{t.name} not quantized"
            assert base.parametrizations[name].original.dtype == torch.uint8
        else:
            assert isinstance(base, bnb.nn.Linear4bit), f"{t.name} is {type(base).__name__}"


def test_plan_prints_families_and_quantization(models, corpus, tmp_path):
    import yaml

    model_dir = models("qwen2_moe")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(matrix_config("qwen2_moe", model_dir, corpus, tmp_path / "run",
                                                   quantizer="bnb-nf4")),
                      encoding="utf-8")
    done = subprocess.run(spectra_cmd("plan", str(config)), capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for needle in ("parameter families", "mlp.experts.gate_up_proj", "  router: ", "  1×H gate: ",
                   "adaptable:", "bnb-nf4 quantizes the fused 3-D expert tensors"):
        assert needle in out, f"{needle!r} missing from:\n{out}"


def test_docs_table_is_generated_from_the_matrix(models):
    from pathlib import Path

    from arch_fixtures import TABLE_END, TABLE_START, architectures_table

    docs = (Path(__file__).resolve().parents[1] / "docs" / "architectures.md").read_text(encoding="utf-8")
    shown = docs.split(TABLE_START)[1].split(TABLE_END)[0].strip()
    assert shown == architectures_table(models), \
        "docs/architectures.md is out of date: paste the output of `python tests/arch_fixtures.py`"


def test_gpt2_conv1d_is_a_target_scanned_out_by_in(models, corpus, tmp_path):
    """GPT-2's Conv1D (stored in × out) is a target; the scan sees it out × in like any linear."""
    model_dir = models("gpt2")
    survey = survey_model(model_dir, TargetsConfig())
    conv = [t for t in survey.targets if t.fan_in_fan_out]
    assert {t.type for t in conv} == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    c_attn = next(t for t in conv if t.type == "attn.c_attn")
    assert (c_attn.out_features, c_attn.in_features) == (192, 64)
    scores = Pipeline.from_dict(matrix_config("gpt2", model_dir, corpus, tmp_path / "run")).scan(progress=False)
    assert scores.by_name()[c_attn.name].shape == (192, 64)


def test_eva_or_loftq_init_on_fused_experts_is_refused(models):
    from spectra_core.errors import ConfigError
    from spectra_core.plan import AdapterPlan, LoraInit, ModulePlan
    from spectra_core.targets import fit_plan

    targets = plan_targets(survey_model(models("mixtral"), TargetsConfig()).targets)
    plan = AdapterPlan(allocator="test", init=LoraInit(name="eva"), modules={t.name: ModulePlan(
        name=t.name, type=t.type, shape=(t.out_features, t.in_features), active=True, rank=2, alpha=4.0)
        for t in targets})
    with pytest.raises(ConfigError, match="fused MoE expert"):
        fit_plan(plan, targets)


STACK_TYPES = {"t5": {"encoder.layer.0.SelfAttention.q", "decoder.layer.0.SelfAttention.q",
                      "decoder.layer.1.EncDecAttention.q", "encoder.layer.1.DenseReluDense.wo"},
               "bart": {"encoder.self_attn.q_proj", "decoder.self_attn.q_proj", "decoder.encoder_attn.q_proj",
                        "encoder.fc1"}}


@pytest.mark.parametrize("arch", SEQ2SEQ_ARCHITECTURES)
def test_encoder_decoder_types_keep_the_stacks_apart(arch, models, corpus, tmp_path):
    """Targets sit in both stacks under types named by their stack, so per-type selection (hybrid's
    top half of each type here) picks from each stack's own modules; shared embeddings and T5's relative
    position bias are skipped with the reason."""
    from collections import Counter

    model_dir = models(arch)
    survey = survey_model(model_dir, TargetsConfig())
    types = {t.type for t in survey.targets}
    assert STACK_TYPES[arch] <= types and all(t.split(".")[0] in ("encoder", "decoder") for t in types)
    assert all(t.type.split(".")[0] == t.name.split(".")[1 if arch == "bart" else 0] for t in survey.targets)
    reasons = {f.type: f.reason for f in survey.families if not f.adapted}
    embeddings = [r for t, r in reasons.items() if t.endswith("decoder.embed_tokens")]
    assert embeddings and embeddings[0].startswith("tied to ")  # one tensor with the shared embedding
    if arch == "t5":
        assert reasons["encoder.layer.0.SelfAttention.relative_attention_bias"].startswith("relative position bias")

    pipe = Pipeline.from_dict(arch_config(arch, model_dir, corpus, tmp_path / "run"))  # spectrum-top, 50 %
    active = Counter(m.type for m in pipe.plan().modules.values() if m.active)
    assert set(active) == types and set(active.values()) == {1}  # 1 of the 2 layers of every type


def test_bnb_keeps_t5s_fp32_modules_in_float_and_the_plan_says_so(models):
    """transformers' bitsandbytes loading keeps T5's ``wo`` in float32 (``_keep_in_fp32_modules``):
    exactly those layers are named by ``spectra plan``'s note and counted in float by the estimate."""
    import bitsandbytes as bnb

    from spectra_core.builtins.quantizers import BnbNF4Quantizer, kept_in_float
    from spectra_core.cli.train import _float_note

    model_dir = models("t5")
    survey = survey_model(model_dir, TargetsConfig())
    loaded = BnbNF4Quantizer().load(model_dir)
    head = loaded.get_output_embeddings()
    in_float = {n for n, m in loaded.named_modules()
                if isinstance(m, torch.nn.Linear) and not isinstance(m, bnb.nn.Linear4bit) and m is not head}
    kept = kept_in_float(survey.model, BnbNF4Quantizer())
    assert kept and set(kept) == in_float and all(n.endswith(".wo") for n in kept)
    assert f"keeps {len(kept)} linear layers (wo; " in _float_note(survey, BnbNF4Quantizer())
    assert _float_note(survey_model(models("llama"), TargetsConfig()), BnbNF4Quantizer()) is None
