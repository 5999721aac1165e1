"""Lazy tensor sources: read a checkpoint tensor by tensor, never the whole model.

One `TensorSource` answers, for any checkpoint layout evomm reads,
which tensors exist, their shapes and dtypes (from headers, no data read) and the tensor
itself on demand. Layouts: HF model dirs (`model.safetensors` or sharded with
`model.safetensors.index.json`), diffusers UNet dirs (`unet/diffusion_pytorch_model...` or the
unet folder itself), and single `.safetensors` files (e.g. SDXL `model.diffusion_model.*`).

Pickled weights (`.bin/.pt/.ckpt/.pth`) can run code when loaded, so they are refused unless
the caller opts in; even then they are loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from evomm.errors import CheckpointError, PickleRefusedError
from evomm.io.safetensors_header import TensorInfo, read_header

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_STEMS = ("model", "diffusion_pytorch_model")
# diffusers "variant" files (`unet/diffusion_pytorch_model.fp16.safetensors`), read when a
# folder has no full-precision weights: SDXL repos such as Juggernaut-XL and JSDXL ship them
WEIGHT_VARIANTS = ("fp16", "bf16")


class TensorSource:
    """A checkpoint opened for lazy reading.

    Attributes: `root` (the folder holding config/tokenizer files, or None for a bare file),
    `config` (parsed `config.json` or None), `layout` ("hf", "diffusers" or "single_file").
    """

    def __init__(self, name: str, root: Path | None, config: dict | None, layout: str):
        self.name = name
        self.root = root
        self.config = config
        self.layout = layout

    def keys(self) -> list[str]:
        raise NotImplementedError

    def info(self, name: str) -> TensorInfo:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self.info(name).dtype

    def __contains__(self, name: str) -> bool:
        return name in set(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything at once: only for small models or when asked."""
        return {k: self.get(k) for k in self.keys()}

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, layout={self.layout!r})"


class SafetensorsSource(TensorSource):
    """One or several safetensors files, read through `safe_open` (memory-mapped)."""

    def __init__(self, name, files: list[Path], root, config, layout):
        super().__init__(name, root, config, layout)
        self._infos: dict[str, TensorInfo] = {}
        for file in files:
            self._infos.update(read_header(file))
        self._keys = list(self._infos)
        self._handles: dict[Path, object] = {}

    def keys(self) -> list[str]:
        return self._keys

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise CheckpointError(f"{self.name}: no tensor named {name!r}") from None

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        file = self.info(name).file
        handle = self._handles.get(file)
        if handle is None:
            try:
                handle = safe_open(str(file), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"{file}: cannot open safetensors file ({exc})") from None
            self._handles[file] = handle
        return handle.get_tensor(name)

    def close(self) -> None:
        self._handles.clear()


class PickleSource(TensorSource):
    """A pickled state dict, loaded whole with `weights_only=True` (opt-in only)."""

    def __init__(self, name, files: list[Path], root, config, layout):
        super().__init__(name, root, config, layout)
        self._tensors: dict[str, torch.Tensor] = {}
        for file in files:
            data = _load_pickle(file)
            if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
                data = data["state_dict"]
            if not isinstance(data, dict):
                raise CheckpointError(f"{file}: does not hold a state dict")
            self._tensors.update({k: v for k, v in data.items() if isinstance(v, torch.Tensor)})

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def info(self, name: str) -> TensorInfo:
        try:
            t = self._tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.name}: no tensor named {name!r}") from None
        return TensorInfo(Path(self.name), tuple(t.shape), t.dtype)

    def get(self, name: str) -> torch.Tensor:
        self.info(name)
        return self._tensors[name]


def _load_pickle(file: Path):
    """torch.load with weights_only=True (memory-mapped when the format allows it)."""
    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{file}: cannot load pickle safely ({first})") from None


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from None


def _index_files(index_path: Path) -> list[Path]:
    index = _read_json(index_path) or {}
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: no 'weight_map' in shard index")
    files = []
    for shard in dict.fromkeys(weight_map.values()):
        file = index_path.parent / shard
        if not file.is_file():
            raise CheckpointError(f"{index_path}: shard {shard} is missing")
        files.append(file)
    return files


def _refuse_pickle(what: Path) -> None:
    raise PickleRefusedError(
        f"{what}: pickled checkpoint refused (pickles can run code); convert it to "
        "safetensors or pass --allow-pickle (allow_pickle=True) to load it with weights_only=True"
    )


def weight_variant(folder: Path) -> str | None:
    """The variant (`"fp16"`, ...) of the safetensors weights in `folder`; None for plain weights
    (preferred when both are there) or when there are none."""
    for variant in (None, *WEIGHT_VARIANTS):
        tag = f".{variant}" if variant else ""
        for stem in WEIGHT_STEMS:
            if (folder / f"{stem}.safetensors.index{tag}.json").is_file() or (folder / f"{stem}{tag}.safetensors").is_file():
                return variant
    return None


def _weight_files(folder: Path) -> tuple[list[Path], bool] | None:
    """Find the weights of an HF/diffusers folder: (files, is_pickle) or None."""
    variant = weight_variant(folder)
    tag = f".{variant}" if variant else ""
    for stem in WEIGHT_STEMS:
        index = folder / f"{stem}.safetensors.index{tag}.json"
        if index.is_file():
            return _index_files(index), False
        single = folder / f"{stem}{tag}.safetensors"
        if single.is_file():
            return [single], False
    for stem, pickle_name in (("pytorch_model", "pytorch_model.bin"),
                              ("diffusion_pytorch_model", "diffusion_pytorch_model.bin")):
        index = folder / f"{pickle_name}.index.json"
        if index.is_file():
            return _index_files(index), True
        if (folder / pickle_name).is_file():
            return [folder / pickle_name], True
    return None


def open_source(path: str | Path, allow_pickle: bool = False, name: str | None = None) -> TensorSource:
    """Open a local checkpoint (folder or file) lazily. See the module doc for layouts."""
    path = Path(path).expanduser()
    label = name or str(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")

    if path.is_file():
        if path.suffix == ".safetensors":
            return SafetensorsSource(label, [path], None, None, "single_file")
        if path.suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                _refuse_pickle(path)
            return PickleSource(label, [path], None, None, "single_file")
        raise CheckpointError(f"{path}: unknown checkpoint file type {path.suffix!r}")

    layouts = [(path, "hf")]
    if (path / "unet").is_dir():
        layouts.insert(0, (path / "unet", "diffusers"))
    for folder, layout in layouts:
        found = _weight_files(folder)
        if found is None:
            continue
        files, is_pickle = found
        if files and (files[0].name.startswith("diffusion_pytorch_model") or layout == "diffusers"):
            layout = "diffusers"
        config = _read_json(folder / "config.json")
        if is_pickle:
            if not allow_pickle:
                _refuse_pickle(files[0])
            return PickleSource(label, files, path, config, layout)
        return SafetensorsSource(label, files, path, config, layout)

    # a folder holding exactly one bare checkpoint file (e.g. an SDXL single-file download)
    singles = sorted(path.glob("*.safetensors"))
    if len(singles) == 1:
        return SafetensorsSource(label, singles, path, None, "single_file")
    pickles = [p for s in PICKLE_SUFFIXES for p in sorted(path.glob(f"*{s}"))]
    if pickles and not singles:
        if not allow_pickle:
            _refuse_pickle(pickles[0])
        if len(pickles) == 1:
            return PickleSource(label, pickles, path, None, "single_file")
    raise CheckpointError(f"{path}: no model weights found (expected model.safetensors, a shard "
                          "index, unet/diffusion_pytorch_model.safetensors or one .safetensors file)")
