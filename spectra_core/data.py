"""Training data: load local files (txt/jsonl/json/csv/parquet) or a hub dataset with ``datasets``,
split off a deterministic validation set, and tokenize for causal-LM training.

Formats (``data.format``):

* ``text``: one document per record (txt: per line); documents end with EOS and, with ``packing``,
  are concatenated and cut into ``max_length`` blocks (the last partial block is dropped unless it
  is the only one). Loss on every token.
* ``instruction``: ``prompt`` + ``response`` columns; loss only on response tokens (+ EOS).
* ``chat``: a ``messages`` column of ``{role, content}`` rendered with the tokenizer's chat
  template; loss only on assistant turns.
* ``seq2seq`` (encoder-decoder models only): ``input`` + ``target`` columns; the encoder reads the
  input, the labels are the target + EOS (the model shifts them into the decoder's inputs itself).
  The causal formats are refused on an encoder-decoder and ``seq2seq`` on a causal LM
  (:func:`check_format`).

Sequences longer than ``max_length`` are truncated and counted (:class:`DataStats.truncated`).
"""

from __future__ import annotations

import codecs
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import HUB_ID, DataConfig
from .errors import ConfigError, InputError

log = logging.getLogger(__name__)

IGNORE = -100
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_READ_HINTS = {"json": "a .jsonl file needs one JSON object per line (a .json file: a list of objects)",
               "csv": "a .csv file needs a header row naming the columns", "parquet": "re-write the parquet file",
               "text": "a .txt file needs one UTF-8 document per line", "hub": "check the hub dataset id"}

Example = dict[str, list[int]]


@dataclass
class DataStats:
    """What tokenization did; the trainer prints and logs it."""

    records: int = 0
    examples: int = 0
    tokens: int = 0
    truncated: int = 0
    dropped_without_labels: int = 0


@dataclass
class TokenizedData:
    train: list[Example]
    validation: list[Example]
    stats: dict[str, DataStats] = field(default_factory=dict)


# ----- loading -----------------------------------------------------------------------------------
def _builder(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in COMPRESSED]
    builder = BUILDERS.get(suffixes[-1].lower()) if suffixes else None
    if builder is None:
        raise InputError(f"{path}: unsupported data file type",
                         hint=f"use one of {', '.join(BUILDERS)} (optionally gzip-compressed)")
    return builder


_SNIFF_BYTES = 1 << 16


def check_data_file(source: str) -> None:
    """Cheap checks of a local data file before anything is loaded: present, a file, a known type,
    not empty, and text where text is expected. Hub dataset ids pass (checked when loaded)."""
    path = Path(source).expanduser()
    if not path.exists():
        if HUB_ID.match(source) and not source.startswith((".", "/", "~")):
            return
        raise InputError(f"data file not found: {source}",
                         hint="set data.path to a local txt/jsonl/json/csv/parquet file or a hub dataset id")
    if not path.is_file():
        raise InputError(f"data path {source} is a directory, not a file",
                         hint="set data.path to one txt/jsonl/json/csv/parquet file")
    builder = _builder(path)
    if path.stat().st_size == 0:
        raise InputError(f"data file {source} is empty (0 bytes)", hint="give a file with at least two records")
    if builder == "parquet" or path.suffix.lower() in COMPRESSED:
        return
    with path.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if b"\x00" in head:
        raise InputError(f"data file {source} is binary, not text (it contains NUL bytes)",
                         hint=f"give a UTF-8 text {path.suffix} file (is it the right file?)")
    complete = len(head) < _SNIFF_BYTES
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError as exc:
        raise InputError(f"data file {source} is not UTF-8 text (undecodable byte at offset {exc.start})",
                         hint=f"give a UTF-8 {path.suffix} file (re-encode it, or check it is the right file)") from None
    if complete and not text.strip():
        raise InputError(f"data file {source} is empty (only whitespace)", hint="give a file with at least two records")


def check_data_source(cfg: DataConfig) -> None:
    """:func:`check_data_file` for the training and the validation file."""
    for source in (cfg.path, cfg.validation_path):
        if source:
            check_data_file(source)


def load_records(source: str):
    """A ``datasets.Dataset`` of raw records from a local file or a hub dataset id."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    check_data_file(source)
    try:
        if path.is_file():
            ds = datasets.load_dataset(_builder(path), data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(source, split="train")
    except Exception as exc:
        raise InputError(f"could not read dataset {source}: {exc}", hint=_READ_HINTS.get(
            _builder(path) if path.is_file() else "hub", "check the file's format")) from exc
    if len(ds) == 0:
        raise InputError(f"dataset {source} is empty", hint="give a file with at least two records")
    return ds


def _require_columns(ds: Any, source: str, columns: dict[str, str]) -> None:
    found = list(ds.column_names)
    for key, column in columns.items():
        if column not in found:
            raise InputError(f"dataset {source} has no column {column!r} (found columns: {', '.join(found)})",
                             hint=f"set data.{key} to one of: {', '.join(found)}")


def _columns(cfg: DataConfig) -> dict[str, str]:
    if cfg.format == "text":
        return {"text_field": cfg.text_field}
    if cfg.format == "instruction":
        return {"prompt_field": cfg.prompt_field, "response_field": cfg.response_field}
    if cfg.format == "seq2seq":
        return {"input_field": cfg.input_field, "target_field": cfg.target_field}
    return {"messages_field": cfg.messages_field}


def check_format(cfg: DataConfig, model_config: Any) -> None:
    """Refuse a data format the model cannot train on: ``seq2seq`` needs an encoder-decoder, the causal
    formats (text, instruction, chat) a decoder-only model (ConfigError, exit 2)."""
    from .automodel import is_seq2seq

    kind = getattr(model_config, "model_type", None)
    if is_seq2seq(model_config) and cfg.format != "seq2seq":
        raise ConfigError(f"data.format is {cfg.format!r}, a causal-LM format, but {kind} is an encoder-decoder "
                          "(seq2seq) model: its encoder reads an input and its decoder learns a target",
                          hint="set data.format: seq2seq, with data.input_field and data.target_field naming the "
                               "columns (defaults: input, target)")
    if not is_seq2seq(model_config) and cfg.format == "seq2seq":
        raise ConfigError(f"data.format is 'seq2seq', but {kind} is a decoder-only causal LM (no encoder)",
                          hint="for input → target pairs use data.format: instruction (prompt_field, response_field; "
                               "loss on the response only), or use an encoder-decoder model (T5, BART)")


def split_records(ds: Any, fraction: float, seed: int, source: str) -> tuple[Any, Any]:
    """A deterministic (seeded) held-out split: ``round(n * fraction)`` records, at least one."""
    n = len(ds)
    if n < 2:
        raise InputError(f"dataset {source} has {n} record(s); a held-out split needs at least 2",
                         hint="add records or set data.validation_path to a separate file")
    n_val = min(n - 1, max(1, round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return ds.select(train), ds.select(val)


# ----- tokenization ------------------------------------------------------------------------------
def prepare_tokenizer(tokenizer: Any) -> Any:
    """Use EOS for padding when the tokenizer has no pad token (logged, not an error)."""
    if tokenizer.eos_token_id is None:
        raise InputError("the tokenizer has no EOS token", hint="use a tokenizer with an eos_token")
    if tokenizer.pad_token_id is None:
        log.info("tokenizer has no pad token; padding with EOS (%r)", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _truncate(ex: Example, max_length: int, stats: DataStats) -> Example:
    if len(ex["input_ids"]) > max_length:
        stats.truncated += 1
        ex = {k: v[:max_length] for k, v in ex.items()}
    return ex


def _text_examples(texts: list[str], tokenizer: Any, cfg: DataConfig, stats: DataStats) -> list[Example]:
    eos = tokenizer.eos_token_id
    docs = [ids + [eos] for ids in tokenizer([t for t in texts if t and t.strip()])["input_ids"]]
    if not cfg.packing:
        return [_truncate({"input_ids": d, "labels": list(d)}, cfg.max_length, stats) for d in docs]
    flat = [tok for d in docs for tok in d]
    n = max(1, len(flat) // cfg.max_length)
    blocks = [flat[i * cfg.max_length:(i + 1) * cfg.max_length] for i in range(n)]
    return [{"input_ids": b, "labels": list(b)} for b in blocks if b]


def _pairs(sources: list[str], answers: list[str], tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """(source tokens as the tokenizer encodes them, answer tokens + EOS) of each record."""
    s_ids = tokenizer([str(x) for x in sources])["input_ids"]
    a_ids = tokenizer([str(a) for a in answers], add_special_tokens=False)["input_ids"]
    return [(x, a + [tokenizer.eos_token_id]) for x, a in zip(s_ids, a_ids)]


def _instruction_examples(prompts: list[str], responses: list[str], tokenizer: Any, cfg: DataConfig,
                          stats: DataStats) -> list[Example]:
    return [_truncate({"input_ids": p + r, "labels": [IGNORE] * len(p) + r}, cfg.max_length, stats)
            for p, r in _pairs(prompts, responses, tokenizer)]


def _seq2seq_examples(inputs: list[str], targets: list[str], tokenizer: Any, cfg: DataConfig,
                      stats: DataStats) -> list[Example]:
    """Encoder input and labels = target + EOS, each cut to max_length."""
    out = []
    for x, t in _pairs(inputs, targets, tokenizer):
        stats.truncated += int(max(len(x), len(t)) > cfg.max_length)
        out.append({"input_ids": x[:cfg.max_length], "labels": t[:cfg.max_length]})
    return out


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _chat_example(messages: list[dict], tokenizer: Any) -> Example:
    """Tokens of the rendered chat; labels only on tokens inside assistant turns (by char spans)."""
    text = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") == "assistant":
            start = len(_render(tokenizer, messages[:i], generation_prompt=True))
            end = len(_render(tokenizer, messages[: i + 1]))
            spans.append((start, end))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [tok if any(s <= a < e for s, e in spans) else IGNORE
              for tok, (a, _) in zip(enc["input_ids"], enc["offset_mapping"])]
    return {"input_ids": list(enc["input_ids"]), "labels": labels}


def _chat_examples(conversations: list[Any], tokenizer: Any, cfg: DataConfig, stats: DataStats,
                   source: str) -> list[Example]:
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"data.format is 'chat' but the tokenizer has no chat template (dataset {source})",
                         hint="use data.format: instruction, or a model whose tokenizer has a chat template")
    out = []
    for i, conv in enumerate(conversations):
        if not isinstance(conv, list) or not all(isinstance(m, dict) and "role" in m for m in conv):
            raise InputError(f"{source}: record {i} is not a list of {{role, content}} messages",
                             hint="each chat record needs messages: [{role: user, content: ...}, ...]")
        out.append(_truncate(_chat_example(conv, tokenizer), cfg.max_length, stats))
    return out


def tokenize_records(ds: Any, tokenizer: Any, cfg: DataConfig, source: str) -> tuple[list[Example], DataStats]:
    """Tokenize one split; examples without any label token (after truncation) are dropped."""
    stats = DataStats(records=len(ds))
    if cfg.format == "text":
        examples = _text_examples(ds[cfg.text_field], tokenizer, cfg, stats)
    elif cfg.format == "instruction":
        examples = _instruction_examples(ds[cfg.prompt_field], ds[cfg.response_field], tokenizer, cfg, stats)
    elif cfg.format == "seq2seq":
        examples = _seq2seq_examples(ds[cfg.input_field], ds[cfg.target_field], tokenizer, cfg, stats)
    else:
        examples = _chat_examples(ds[cfg.messages_field], tokenizer, cfg, stats, source)
    first = 0 if cfg.format == "seq2seq" else 1  # a causal LM predicts no label at position 0
    kept = [e for e in examples if any(t != IGNORE for t in e["labels"][first:])]
    stats.dropped_without_labels = len(examples) - len(kept)
    stats.examples = len(kept)
    stats.tokens = sum(len(e["input_ids"]) for e in kept)
    if not kept:
        raise InputError(f"dataset {source} yields no trainable example (all empty or fully truncated)",
                         hint="raise data.max_length or check the records' content")
    if stats.truncated:
        log.warning("%s: %d sequence(s) longer than max_length=%d were truncated",
                    source, stats.truncated, cfg.max_length)
    return kept, stats


def load_data(cfg: DataConfig, tokenizer: Any, seed: int = 0) -> TokenizedData:
    """Load, split and tokenize the configured data (validation from a file or a seeded split)."""
    prepare_tokenizer(tokenizer)
    ds = load_records(cfg.path)
    _require_columns(ds, cfg.path, _columns(cfg))
    if cfg.max_samples is not None:
        ds = ds.select(range(min(cfg.max_samples, len(ds))))
    if cfg.validation_path:
        train_ds, val_ds = ds, load_records(cfg.validation_path)
        _require_columns(val_ds, cfg.validation_path, _columns(cfg))
    else:
        train_ds, val_ds = split_records(ds, cfg.validation_fraction, seed, cfg.path)
    train, train_stats = tokenize_records(train_ds, tokenizer, cfg, cfg.path)
    val, val_stats = tokenize_records(val_ds, tokenizer, cfg, cfg.validation_path or cfg.path)
    return TokenizedData(train, val, {"train": train_stats, "validation": val_stats})


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids and their attention_mask to the longest input, labels (-100 on
    padding) to the longest labels (as long as the inputs for a causal LM; the target for seq2seq)."""
    width = max(len(e["input_ids"]) for e in examples)
    label_width = max(len(e["labels"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), label_width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :len(e["labels"])] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The shuffled example order of one epoch: a pure function of seed and epoch (resume relies on it)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def micro_batch_indices(m: int, *, batch_size: int, n: int, seed: int, world: int = 1, rank: int = 0) -> list[int]:
    """Example indices of process ``rank``'s share of global micro-batch ``m``: the next ``batch_size``
    positions of the concatenated epoch orders, so batches depend only on ``m`` and the seed."""
    first = (m * world + rank) * batch_size
    return [epoch_order(n, seed, k // n)[k % n] for k in range(first, first + batch_size)]
