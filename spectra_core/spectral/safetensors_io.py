"""A minimal, validating safetensors reader: headers and one tensor at a time, never pickle.

Tensors are read with ``readinto`` straight into their own buffer, so only the tensor being scored
is resident (no whole-file mapping whose touched pages would add up in RSS).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from spectra_core.errors import InputError
from spectra_core.spectral.phases import phase

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_HINT = "re-download or re-save the checkpoint (save_pretrained / safetensors.torch.save_file)"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives inside a safetensors file."""

    file: Path
    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_header(path: Path) -> list[TensorInfo]:
    """Parse and validate a safetensors header; every tensor must lie inside the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"safetensors file not found: {path}", hint=_HINT)
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise InputError(f"{path} is not a safetensors file ({size} bytes, no header)", hint=_HINT)
        (hlen,) = struct.unpack("<Q", raw)
        if hlen > size - 8 or hlen > 100_000_000:
            raise InputError(f"{path} is corrupt or truncated: header length {hlen} exceeds file size {size}",
                             hint=_HINT)
        try:
            header = json.loads(fh.read(hlen))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is corrupt: its header is not valid JSON ({exc})", hint=_HINT) from exc
    if not isinstance(header, dict):
        raise InputError(f"{path} is corrupt: header is not a JSON object", hint=_HINT)
    base = 8 + hlen
    infos = []
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = meta["dtype"], tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path} is corrupt: bad header entry for tensor {key!r}", hint=_HINT) from exc
        if dtype not in DTYPES:
            raise InputError(f"{path}: tensor {key!r} has unsupported dtype {dtype}", hint=_HINT)
        if base + end > size:
            raise InputError(f"{path} is truncated: tensor {key!r} needs bytes up to {base + end}, "
                             f"the file has {size}", hint=_HINT)
        numel = 1
        for d in shape:
            numel *= d
        if end - start != numel * DTYPES[dtype].itemsize:
            raise InputError(f"{path} is corrupt: tensor {key!r} has {end - start} bytes for shape {list(shape)}",
                             hint=_HINT)
        infos.append(TensorInfo(path, key, dtype, shape, base + start, base + end))
    return infos


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Read one tensor from disk into its own memory."""
    with phase("read"):
        return _read(info)


def _read(info: TensorInfo) -> torch.Tensor:
    dtype = DTYPES[info.dtype]
    buf = torch.empty(info.end - info.start, dtype=torch.uint8)
    with info.file.open("rb") as fh:
        fh.seek(info.start)
        got = fh.readinto(memoryview(buf.numpy()))
    if got != info.end - info.start:
        raise InputError(f"{info.file}: short read for tensor {info.key!r}", hint=_HINT)
    return buf.view(dtype).reshape(info.shape)
