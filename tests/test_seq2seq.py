"""Encoder-decoder (T5, BART) data and loss: ``data.format: seq2seq`` puts the loss on the target tokens
only, the seq2seq loss equals the model's own, format mismatches exit 2 through the CLI, and a trained
T5 run generates, evaluates (`spectra eval`) and documents itself with an encoder-decoder class."""

from __future__ import annotations

import subprocess

import pytest
import torch
import yaml
from arch_fixtures import make_model
from train_fixtures import (
    cli_env,
    config_dict,
    instruction_rows,
    make_tiny_model,
    make_tokenizer,
    spectra_cmd,
    write_jsonl,
    write_text,
)

from spectra_core.config import DataConfig
from spectra_core.data import IGNORE, collate, load_records, tokenize_records
from spectra_core.pipeline import Pipeline
from spectra_core.training.loss import lm_loss


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rows = [{"src": r["prompt"], "tgt": r["response"]} for r in instruction_rows(12)]
    return rows, write_jsonl(tmp_path_factory.mktemp("s2s-data") / "pairs.jsonl", rows)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return make_model("t5", tmp_path_factory.mktemp("s2s-t5") / "t5")


def seq2seq_config(path, max_length: int = 32) -> DataConfig:
    return DataConfig(path=str(path), format="seq2seq", input_field="src", target_field="tgt", max_length=max_length)


def test_labels_are_the_target_and_eos_only(pairs):
    rows, path = pairs
    tok = make_tokenizer()
    examples, stats = tokenize_records(load_records(str(path)), tok, seq2seq_config(path), str(path))
    assert stats.examples == len(rows) and stats.truncated == 0
    for row, ex in zip(rows, examples):
        assert ex["input_ids"] == tok(row["src"])["input_ids"]
        assert ex["labels"] == tok(row["tgt"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    batch = collate(examples[:4], tok.pad_token_id)
    inputs, targets = [len(e["input_ids"]) for e in examples[:4]], [len(e["labels"]) for e in examples[:4]]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, max(inputs))
    assert batch["attention_mask"].sum(1).tolist() == inputs
    assert batch["labels"].shape == (4, max(targets))
    assert (batch["labels"] != IGNORE).sum(1).tolist() == targets  # padding is -100, every target token counts


def test_truncation_cuts_input_and_target_and_counts_it(pairs):
    _, path = pairs
    examples, stats = tokenize_records(load_records(str(path)), make_tokenizer(), seq2seq_config(path, 4), str(path))
    assert stats.truncated == len(examples)
    assert all(len(e["input_ids"]) <= 4 and len(e["labels"]) <= 4 for e in examples)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_seq2seq_loss_equals_the_models_own_on_target_tokens(arch, pairs, tmp_path):
    """lm_loss on an encoder-decoder: sum over target tokens of the loss transformers computes itself
    (labels shifted into decoder inputs by the model); the encoder input carries no loss but matters."""
    from transformers import AutoModelForSeq2SeqLM

    _, path = pairs
    model = AutoModelForSeq2SeqLM.from_pretrained(make_model(arch, tmp_path / arch)).eval()
    tok = make_tokenizer()
    examples, _ = tokenize_records(load_records(str(path)), tok, seq2seq_config(path), str(path))
    batch = collate(examples[:3], tok.pad_token_id)
    with torch.no_grad():
        total, n = lm_loss(model, batch)
        own = model(**batch).loss  # mean over the label tokens
        other_input = batch | {"input_ids": batch["input_ids"].flip(1)}
        changed, _ = lm_loss(model, other_input)
    assert n == sum(len(e["labels"]) for e in examples[:3])
    torch.testing.assert_close(total / n, own, rtol=1e-5, atol=1e-6)
    assert abs(float(changed - total)) > 1e-4  # the encoder reads the input


@pytest.mark.parametrize(("arch", "fmt"), [("t5", "text"), ("llama", "seq2seq")])
def test_format_mismatch_exits_2_before_writing(arch, fmt, pairs, tmp_path):
    """``spectra train``: a causal format on an encoder-decoder, or seq2seq on a causal LM, is a
    config error naming data.format and the fix; no run directory is written."""
    model_dir = make_model("t5", tmp_path / "t5") if arch == "t5" else make_tiny_model(tmp_path / "llama")
    data = write_text(tmp_path / "train.txt", n=20) if fmt == "text" else pairs[1]
    cfg = config_dict(model_dir, data, tmp_path / "run")
    cfg["data"]["format"] = fmt
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    done = subprocess.run(spectra_cmd("train", str(config)), capture_output=True, text=True, env=cli_env(),
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert "data.format" in done.stderr and "Traceback" not in done.stderr
    want = "set data.format: seq2seq" if arch == "t5" else "encoder-decoder model"
    assert want in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def t5_run(t5_dir, pairs, tmp_path_factory):
    cfg = config_dict(t5_dir, pairs[1], tmp_path_factory.mktemp("s2s-run") / "run", max_steps=2, eval_every=2,
                      save_every=2)
    cfg["data"] |= {"format": "seq2seq", "input_field": "src", "target_field": "tgt"}
    cfg["exporters"] = [{"name": "peft-adapter"}, {"name": "merged"}]
    pipe = Pipeline.from_dict(cfg)
    run = pipe.train()
    return pipe, run, pipe.export(run)


def test_t5_generate_replies_with_the_decoder_tokens(t5_run):
    """``spectra generate``'s code path on the run directory and on the merged export: the reply is what
    the decoder generated (an encoder-decoder's output holds no prompt to cut off)."""
    from spectra_core.cli.generate import complete
    from spectra_core.loading import load_for_inference

    _, run, paths = t5_run
    for target in (run.run_dir, paths["merged"]):
        loaded = load_for_inference(target)
        tok = loaded.tokenizer
        assert loaded.model.config.is_encoder_decoder
        loaded.model.generation_config.suppress_tokens = [tok.pad_token_id, tok.eos_token_id]  # random weights emit pad
        reply = complete(loaded.model, tok, "Q: the lamp\nA:", None, max_new_tokens=6, temperature=0.0, top_p=1.0)
        decoder_tokens = loaded.model.generate(**tok("Q: the lamp\nA:", return_tensors="pt"), max_new_tokens=6,
                                               do_sample=False)[0]
        assert reply and reply == tok.decode(decoder_tokens, skip_special_tokens=True)


def test_eval_cli_on_a_merged_t5_reads_seq2seq_pairs_by_default(t5_run, tmp_path):
    """`spectra eval MERGED --data pairs.jsonl`: an encoder-decoder model directory defaults to
    data.format seq2seq; its loss equals the run's own evaluation of the same pairs."""
    import json

    from spectra_core.evaluation import heldout_loss
    from spectra_core.loading import load_for_inference

    pipe, run, paths = t5_run
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"input": r["src"], "target": r["tgt"]}) + "\n"
                             for r in map(json.loads, open(pipe.config.data.path, encoding="utf-8"))), encoding="utf-8")
    out = tmp_path / "eval.json"
    done = subprocess.run(spectra_cmd("eval", str(paths["merged"]), "--data", str(pairs), "--out", str(out)),
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = load_for_inference(run.run_dir)
    want = heldout_loss(loaded.model, loaded.tokenizer, pipe.config.data, batch_size=4)
    got = json.loads(out.read_text())["heldout"]
    assert got["tokens"] == want["tokens"] and abs(got["loss"] - want["loss"]) < 1e-4 * want["loss"]


def test_t5_model_card_snippet_loads_with_the_seq2seq_class(t5_run, capsys):
    _, _, paths = t5_run
    card = (paths["peft-adapter"] / "README.md").read_text(encoding="utf-8")
    snippet = card.split("## Load", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "AutoModelForSeq2SeqLM.from_pretrained(base_id" in snippet and "AutoModelForCausalLM" not in snippet
    exec(compile(snippet, "model-card", "exec"), {})  # as a user pastes it
    assert capsys.readouterr().out.strip()
    assert yaml.safe_load((paths["peft-adapter"] / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"


def test_axolotl_export_of_a_seq2seq_run_is_refused_and_writes_nothing(t5_run, tmp_path):
    from spectra_core.errors import InputError
    from spectra_core.export.axolotl import AxolotlExporter

    with pytest.raises(InputError, match="encoder-decoder"):
        AxolotlExporter().export(t5_run[1], tmp_path / "axolotl.yaml")
    assert list(tmp_path.iterdir()) == []


def test_module_types_keep_the_stack_and_match_every_spectrum_reference_file(spectrum_reference):
    """The encoder/decoder stack stays in front of Spectrum's type; every name in Spectrum's published
    result files still gets the type the file records."""
    from spectra_core.errors import InputError
    from spectra_core.spectral.formats import load_scores
    from spectra_core.spectral.types import module_type

    assert module_type("encoder.block.0.layer.0.SelfAttention.q") == "encoder.layer.0.SelfAttention.q"
    assert module_type("decoder.block.1.layer.1.EncDecAttention.q") == "decoder.layer.1.EncDecAttention.q"
    assert module_type("model.decoder.layers.3.encoder_attn.k_proj") == "decoder.encoder_attn.k_proj"
    assert module_type("model.layers.7.self_attn.q_proj") == "self_attn.q_proj"
    checked = 0
    for path in sorted((spectrum_reference / "model_snr_results").glob("*.json")):
        try:
            scores = load_scores(path)
        except InputError:  # an empty reference file (tested in test_scan_formats)
            continue
        wrong = [(m.name, m.type) for m in scores.modules if module_type(m.name) != m.type]
        assert not wrong, f"{path.name}: {wrong[:3]}"
        checked += len(scores.modules)
    assert checked > 10_000


def test_t5_resume_is_bitwise_identical(t5_dir, pairs, tmp_path):
    """A seq2seq run stopped after its step-2 checkpoint and resumed ends with the uninterrupted adapter."""
    import shutil

    from safetensors.torch import load_file

    def pipe(out):
        cfg = config_dict(t5_dir, pairs[1], out, max_steps=4, save_every=2, eval_every=2, gradient_accumulation=2)
        cfg["data"] |= {"format": "seq2seq", "input_field": "src", "target_field": "tgt"}
        return Pipeline.from_dict(cfg)

    pipe(tmp_path / "a").train()
    pipe(tmp_path / "b").train()
    shutil.rmtree(tmp_path / "b" / "final")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000004")
    pipe(tmp_path / "b").train(resume=True)
    a = load_file(tmp_path / "a" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("base_model.model.encoder.") for k in a) and any(".decoder." in k for k in a)


def test_eva_init_on_an_encoder_decoder_is_refused(t5_dir, pairs, tmp_path):
    """peft's EVA masks layer inputs with one token mask; T5's encoder and decoder inputs differ in length."""
    from spectra_core.errors import ConfigError

    cfg = config_dict(t5_dir, pairs[1], tmp_path / "run", max_steps=2)
    cfg["data"] |= {"format": "seq2seq", "input_field": "src", "target_field": "tgt"}
    cfg["allocator"]["options"]["lora_init"] = {"name": "eva"}
    with pytest.raises(ConfigError, match="encoder-decoder"):
        Pipeline.from_dict(cfg).train()
    assert not (tmp_path / "run" / "final").exists()
