"""Write safetensors shards while tensors stream in, holding only one tensor at a time.

The merge plan knows every output tensor's name, shape and dtype before any arithmetic runs,
so shard headers can be written first and each tensor's bytes appended the moment it is
computed. Peak memory is one tensor, not one shard (as a write-at-close writer needs).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from evomm.io.safetensors_header import DTYPE_CODES


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2G', 1000 -> bytes."""
    if isinstance(text, int):
        return text
    units = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    num = s.rstrip("KMGT")
    return int(float(num) * units[s[len(num):]])


class ShardedWriter:
    """Streams `entries` (in order) into shards of at most `max_shard_bytes`.

    One shard is named `weights_name`; several are `stem-0000i-of-0000n.safetensors` with a
    `weights_name + .index.json`, the layout `from_pretrained` reads.
    """

    def __init__(self, out_dir: Path, entries: list[PlannedTensor],
                 weights_name: str = "model.safetensors", max_shard_bytes: int = 5 * 10**9):
        self.out_dir = Path(out_dir)
        self.weights_name = weights_name
        self.entries = entries
        self._shards: list[list[PlannedTensor]] = [[]]
        size = 0
        for entry in entries:
            if self._shards[-1] and size + entry.nbytes > max_shard_bytes:
                self._shards.append([])
                size = 0
            self._shards[-1].append(entry)
            size += entry.nbytes
        stem = weights_name.removesuffix(".safetensors")
        n = len(self._shards)
        self.shard_names = ([weights_name] if n == 1 else
                            [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self._order = [(shard_idx, e) for shard_idx, shard in enumerate(self._shards) for e in shard]
        self._pos = 0
        self._fh = None
        self._shard_idx = -1

    def _open_shard(self, idx: int) -> None:
        if self._fh is not None:
            self._fh.close()
        header, offset = {}, 0
        for entry in self._shards[idx]:
            header[entry.name] = {"dtype": DTYPE_CODES[entry.dtype], "shape": list(entry.shape),
                                  "data_offsets": [offset, offset + entry.nbytes]}
            offset += entry.nbytes
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # 8-byte aligned data, as safetensors writes it
        self._fh = open(self.out_dir / self.shard_names[idx], "wb")
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)
        self._shard_idx = idx

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; names must come in the planned order."""
        shard_idx, entry = self._order[self._pos]
        if name != entry.name:
            raise RuntimeError(f"writer expected {entry.name!r}, got {name!r}")
        if tuple(tensor.shape) != entry.shape or tensor.dtype != entry.dtype:
            raise RuntimeError(f"{name}: planned {entry.shape} {entry.dtype}, got "
                               f"{tuple(tensor.shape)} {tensor.dtype}")
        if shard_idx != self._shard_idx:
            self._open_shard(shard_idx)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._fh.write(memoryview(data.numpy()))
        self._pos += 1

    def close(self) -> None:
        """Finish the last shard and write the index (when there are several shards)."""
        if self._pos != len(self._order):
            missing = self._order[self._pos][1].name
            raise RuntimeError(f"writer closed before {missing!r} was written")
        if self._fh is None and self._order == []:
            self._open_shard(0)  # an empty model still gets a valid file
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if len(self.shard_names) > 1:
            index = {"metadata": {"total_size": sum(e.nbytes for e in self.entries)},
                     "weight_map": {e.name: self.shard_names[i] for i, e in self._order}}
            (self.out_dir / f"{self.weights_name}.index.json").write_text(json.dumps(index, indent=2))

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
