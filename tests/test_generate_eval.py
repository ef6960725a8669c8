"""`spectra generate` and `spectra eval` on a real (tiny) trained run: streaming, chat template, seeds,
interactive mode; held-out loss against transformers' own loss; lm-eval tasks from local YAML files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from train_fixtures import config_dict, make_tiny_model, write_text

from spectra_core.cli.generate import complete
from spectra_core.config import DataConfig
from spectra_core.errors import InputError
from spectra_core.evaluation import TASKS_DIR, heldout_loss, lm_eval_tasks
from spectra_core.loading import load_for_inference
from spectra_core.pipeline import Pipeline

PROMPT = "The king went over the river"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generate")
    cfg = config_dict(make_tiny_model(root / "model"), write_text(root / "train.txt", n=80), root / "run",
                      max_steps=2)
    cfg["exporters"] = []
    Pipeline.from_dict(cfg).train()
    write_text(root / "heldout.txt", n=12, seed=5)
    return root


def greedy_chat_reply(loaded, prompt: str, n: int) -> str:
    tok = loaded.tokenizer
    inputs = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_generate_streams_the_greedy_chat_reply_of_the_trained_run(trained, run_cli):
    done = run_cli("generate", trained / "run", PROMPT, "--max-new-tokens", "12", "--temperature", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = load_for_inference(trained / "run")
    assert loaded.run is not None and "adapter" in loaded.description
    expected = greedy_chat_reply(loaded, PROMPT, 12)
    assert expected.strip() and done.stdout.strip() == expected.strip()


def test_interactive_session_answers_each_line_until_end_of_input(trained, run_cli):
    done = run_cli("generate", trained / "model", "--max-new-tokens", "6", "--temperature", "0",
                   input_text=f"{PROMPT}\nthe dog runs\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded model" in done.stderr and len(done.stdout.strip().splitlines()) >= 2


def test_sampling_follows_the_seed(trained):
    from transformers import set_seed

    loaded = load_for_inference(trained / "run")
    replies = []
    for seed in (1, 1, 2):
        set_seed(seed)
        replies.append(complete(loaded.model, loaded.tokenizer, PROMPT, None, max_new_tokens=16, temperature=1.5,
                                top_p=1.0))
    assert replies[0] == replies[1] != replies[2]


def test_generate_refuses_a_directory_that_is_neither_run_nor_model(tmp_path, run_cli):
    done = run_cli("generate", tmp_path, "hello")
    assert done.returncode == 2 and "neither a spectra run directory" in done.stderr


def test_heldout_loss_equals_transformers_token_weighted_loss(trained):
    loaded = load_for_inference(trained / "run")
    got = heldout_loss(loaded.model, loaded.tokenizer, DataConfig(path=str(trained / "heldout.txt"),
                                                                    max_length=32), batch_size=3)
    from spectra_core.data import load_records, tokenize_records

    examples, _ = tokenize_records(load_records(str(trained / "heldout.txt")), loaded.tokenizer,
                                   DataConfig(path="x", max_length=32), "x")
    total = count = 0.0
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e["input_ids"]])
            n = len(e["input_ids"]) - 1
            total += float(loaded.model(input_ids=ids, labels=ids).loss) * n
            count += n
    assert got["tokens"] == count and got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_eval_cli_scores_heldout_data_and_the_bundled_task(trained, tmp_path, run_cli):
    pytest.importorskip("lm_eval")
    out = tmp_path / "results.json"
    done = run_cli("eval", trained / "run", "--data", trained / "heldout.txt", "--tasks", "kjv_proverbs_cloze",
                   "--limit", "8", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["heldout"]["loss"] > 0 and "held-out loss" in done.stdout
    metrics = results["tasks"]["kjv_proverbs_cloze"]
    assert metrics["sample_len"] == 8
    assert all(0 <= metrics[k] <= 1 and (metrics[k] * 8) == pytest.approx(round(metrics[k] * 8)) for k in ("acc", "acc_norm"))


def test_custom_task_yaml_with_relative_data_files(trained, tmp_path):
    pytest.importorskip("lm_eval")
    rows = [{"context": "the king went over the", "choices": ["river", "king"], "label": 0}] * 3
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = (TASKS_DIR / "kjv_proverbs_cloze.yaml").read_text().replace("kjv_proverbs_cloze", "mine")
    (tmp_path / "mine.yaml").write_text(text)
    loaded = load_for_inference(trained / "model")
    metrics = lm_eval_tasks(loaded.model, loaded.tokenizer, [str(tmp_path / "mine.yaml")])["mine"]
    assert metrics["sample_len"] == 3 and metrics["acc"] in (0.0, 1.0)  # three identical documents
    shutil.move(tmp_path / "mine.jsonl", tmp_path / "gone.jsonl")
    with pytest.raises(InputError, match="data file mine.jsonl not found"):
        lm_eval_tasks(loaded.model, loaded.tokenizer, [str(tmp_path / "mine.yaml")])
    with pytest.raises(InputError, match="unknown task 'nope'"):
        lm_eval_tasks(loaded.model, loaded.tokenizer, ["nope"])
