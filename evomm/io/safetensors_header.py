"""Read and check a safetensors header without loading any tensor data.

A download cut short leaves a file whose header promises more bytes than the file holds;
`safe_open` then fails later with an obscure message (or mmaps garbage). Checking the header
against the file size up front gives a clear, early error and the shapes/dtypes for free.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from evomm.errors import CheckpointError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", torch.uint8),
    "F8_E5M2": getattr(torch, "float8_e5m2", torch.uint8),
}
DTYPE_CODES: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it looks like, known before reading it."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse `path`'s header; raise CheckpointError if it is corrupt or the file truncated."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > _MAX_HEADER or 8 + header_len > size:
                raise CheckpointError(
                    f"{path}: truncated or corrupt safetensors file (header of {header_len} "
                    f"bytes does not fit in {size} bytes)"
                )
            header = json.loads(fh.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from None
    header.pop("__metadata__", None)
    data_end = 0
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry {name!r}") from None
        data_end = max(data_end, end)
        infos[name] = TensorInfo(path, shape, dtype)
    needed = 8 + header_len + data_end
    if size < needed:
        raise CheckpointError(
            f"{path}: truncated safetensors file ({size} bytes, header needs {needed}); "
            "re-download or re-save it"
        )
    return infos
