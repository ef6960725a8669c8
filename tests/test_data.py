"""Data loading and tokenization with real files and the datasets library."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from train_fixtures import chat_rows, instruction_rows, make_tokenizer, sentences, write_jsonl, write_text

from spectra_core.config import DataConfig
from spectra_core.data import IGNORE, collate, load_data
from spectra_core.errors import InputError


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def test_text_packing_makes_full_blocks(tmp_path, tok):
    data = load_data(DataConfig(path=str(write_text(tmp_path / "d.txt", 100)), max_length=16), tok)
    assert data.train and data.validation
    assert all(len(e["input_ids"]) == 16 and e["labels"] == e["input_ids"] for e in data.train)
    assert data.stats["train"].records == 95 and data.stats["validation"].records == 5
    assert data.stats["train"].truncated == 0


def test_long_sequences_are_truncated_and_counted(tmp_path, tok, caplog):
    lines = sentences(20, length=(3, 4)) + sentences(10, seed=5, length=(40, 50))
    path = tmp_path / "long.txt"
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(path=str(path), max_length=24, packing=False, validation_fraction=0.1)
    with caplog.at_level("WARNING"):
        data = load_data(cfg, tok)
    total = data.stats["train"].truncated + data.stats["validation"].truncated
    assert total == 10
    assert max(len(e["input_ids"]) for e in data.train + data.validation) == 24
    assert "truncated" in caplog.text


def test_instruction_loss_only_on_response(tmp_path, tok):
    rows = instruction_rows(20)
    data = load_data(DataConfig(path=str(write_jsonl(tmp_path / "i.jsonl", rows)), format="instruction",
                                max_length=128), tok)
    for ex in data.train:
        n_prompt = ex["labels"].index(next(t for t in ex["labels"] if t != IGNORE))
        assert tok.decode(ex["input_ids"][:n_prompt]).startswith("Q:")
        assert tok.decode(ex["input_ids"][:n_prompt]).rstrip().endswith("A:")
        assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
        assert ex["labels"][-1] == tok.eos_token_id


def test_chat_loss_only_on_assistant_turns(tmp_path, tok):
    rows = chat_rows(10)
    data = load_data(DataConfig(path=str(write_jsonl(tmp_path / "c.jsonl", rows)), format="chat",
                                max_length=256, validation_fraction=0.2), tok)
    assistant = {r["messages"][2]["content"] for r in rows}
    users = {r["messages"][1]["content"] for r in rows}
    for ex in data.train:
        learned = tok.decode([t for t in ex["labels"] if t != IGNORE])
        assert learned.strip().removesuffix("<|im_end|>").strip() in assistant
        assert not any(u in learned for u in users)


def test_csv_and_parquet(tmp_path, tok):
    rows = instruction_rows(12)
    pd.DataFrame(rows).to_csv(tmp_path / "i.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "i.parquet")
    a = load_data(DataConfig(path=str(tmp_path / "i.csv"), format="instruction"), tok)
    b = load_data(DataConfig(path=str(tmp_path / "i.parquet"), format="instruction"), tok)
    assert a.train == b.train and len(a.train) + len(a.validation) == 12


def test_validation_split_is_deterministic(tmp_path, tok):
    cfg = DataConfig(path=str(write_text(tmp_path / "d.txt", 200)), max_length=8, packing=False,
                     validation_fraction=0.1)
    a, b, c = load_data(cfg, tok, seed=0), load_data(cfg, tok, seed=0), load_data(cfg, tok, seed=1)
    assert a.validation == b.validation and a.train == b.train
    assert a.validation != c.validation
    assert len(a.validation) == 20


def test_validation_path(tmp_path, tok):
    cfg = DataConfig(path=str(write_text(tmp_path / "t.txt", 50)), max_length=8, packing=False,
                     validation_path=str(write_text(tmp_path / "v.txt", 7, seed=9)))
    data = load_data(cfg, tok)
    assert len(data.train) == 50 and len(data.validation) == 7


def test_empty_dataset_names_the_file(tmp_path, tok):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(InputError, match="empty.jsonl") as err:
        load_data(DataConfig(path=str(path), format="instruction"), tok)
    assert "empty" in str(err.value)


def test_wrong_column_lists_found_columns(tmp_path, tok):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "b"}] * 5)
    with pytest.raises(InputError) as err:
        load_data(DataConfig(path=str(path), format="instruction"), tok)
    msg = str(err.value)
    assert "q.jsonl" in msg and "'prompt'" in msg and "question, answer" in msg and "data.prompt_field" in msg


def test_missing_file_and_bad_type(tmp_path, tok):
    with pytest.raises(InputError, match="not found"):
        load_data(DataConfig(path=str(tmp_path / "nope.txt")), tok)
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(InputError, match="unsupported"):
        load_data(DataConfig(path=str(tmp_path / "x.xml")), tok)


def test_tokenizer_without_pad_uses_eos(tmp_path):
    tok = make_tokenizer(pad=False)
    assert tok.pad_token_id is None
    data = load_data(DataConfig(path=str(write_text(tmp_path / "d.txt", 30)), max_length=8, packing=False), tok)
    assert tok.pad_token_id == tok.eos_token_id
    batch = collate(data.train[:4], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def test_collate_pads_right_and_ignores_padding():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [IGNORE]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [IGNORE] * 3]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_max_samples(tmp_path, tok):
    path = write_jsonl(tmp_path / "i.jsonl", instruction_rows(30))
    data = load_data(DataConfig(path=str(path), format="instruction", max_samples=10), tok)
    assert data.stats["train"].records + data.stats["validation"].records == 10
    assert json.loads(path.read_text().splitlines()[0])["prompt"]
