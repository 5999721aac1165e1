"""JSDXL (stabilityai/japanese-stable-diffusion-xl) -> a plain `StableDiffusionXLPipeline` folder.

The published repo loads only through transformers' remote-code option, which evomm never
turns on. Only two of its parts are code, and neither holds weights:

- `pipeline_japanese_stable_diffusion_xl.py` (`JapaneseStableDiffusionXLPipeline`, named by
  `model_index.json`): an SDXL pipeline with ONE text encoder. Its `encode_prompt` takes
  `hidden_states[-2]` of `text_encoder` (a transformers `CLIPTextModelWithProjection`, tokenised
  by `tokenizer`, an `AutoTokenizer`), concatenates 1280 zero channels from a "null encoder"
  and uses a 1280-wide zero vector as the pooled embedding; a negative prompt gets the same
  treatment, an absent one is all zeros (`force_zeros_for_empty_prompt`).
- `modeling_clipnull.py` (`CLIPNullTextModel`): that null encoder, built in the pipeline's
  `__init__` when no `null_encoder` component is saved.

Everything else is standard: `unet/` is an SDXL `UNet2DConditionModel`, `vae/` an
`AutoencoderKL`, `scheduler/` a diffusers scheduler, and `text_encoder/` + `tokenizer/` load
with plain transformers classes (SakanaAI's EvoSDXL-JP code loads them with
`CLIPTextModelWithProjection.from_pretrained(..., variant="fp16")` and
`AutoTokenizer.from_pretrained(..., use_fast=False)`, no remote code).

The conversion therefore writes the same conditioning with standard classes only:

- `text_encoder`: JSDXL's encoder as a `CLIPTextModel` (same tensors, minus its unused
  `text_projection.weight`: JSDXL's pipeline never reads the projected output, and
  SDXL's `encode_prompt` would take a projected output of the first encoder as the pooled one).
- `text_encoder_2`: a one-layer `CLIPTextModelWithProjection` whose weights are all zero, so its
  `hidden_states[-2]` and pooled output are exactly zero, with the null width read from the
  UNet config (1280 for the real repo) - the null encoder, as weights instead of code.
- `tokenizer` and `tokenizer_2`: copies of JSDXL's tokenizer (same sequence length for both).
- `unet/`, `vae/`, `scheduler/`: copied byte for byte (safetensors and configs only).

Assumption (the one thing not read from source): `CLIPNullTextModel` returns zeros. The
pipeline code builds explicit zeros of the null encoder's width for negative prompts and the
model is named "null"; `docs/jsdxl.md` gives a check against the original pipeline. Anything the
converter does not recognise is refused with a one-line `EvommError`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from evomm.errors import CheckpointError, ConfigError

JSDXL_PIPELINE = "JapaneseStableDiffusionXLPipeline"
NULL_ENCODER_CLASS = "CLIPNullTextModel"
TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")
COMPONENTS = ("vae", "unet", "scheduler", "text_encoder", "tokenizer")
EXPECTED = {"vae": ("diffusers", "AutoencoderKL"), "unet": ("diffusers", "UNet2DConditionModel")}
CONFIG_KEYS = ("force_zeros_for_empty_prompt",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
PROJECTION_KEY = "text_projection.weight"
CONVERSION_NOTE = "evomm_conversion.json"
REAL_NULL_WIDTH = 1280  # hard-coded in JapaneseStableDiffusionXLPipeline.__init__
JSDXL_REPO_ID = "stabilityai/japanese-stable-diffusion-xl"


@dataclass
class JSDXLLayout:
    """What `inspect_jsdxl` found in a local copy of the JSDXL repo."""

    root: Path
    index: dict
    text_encoder_class: str
    tokenizer_entry: list
    text_width: int
    null_width: int
    weight_files: dict[str, list[str]] = field(default_factory=dict)  # component -> file names


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing ({what})") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _entry(index: dict, name: str) -> list | None:
    value = index.get(name)
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2):
        raise ConfigError(f"model_index.json: {name!r} is {value!r}, not a [library, class] pair")
    return value


def _no_code(folder: Path) -> None:
    """Refuse component folders that carry their own code (they would need remote code)."""
    code = sorted(p.name for p in folder.glob("*.py"))
    if code:
        raise ConfigError(f"{folder}: holds code ({', '.join(code)}); not a layout evomm converts")
    for name in ("config.json", "tokenizer_config.json", "scheduler_config.json"):
        path = folder / name
        if path.is_file() and "auto_map" in _read_json(path, name):
            raise ConfigError(f"{path}: names remote code (auto_map); not a layout evomm converts")


def _safetensors_files(folder: Path) -> list[str]:
    """Names of the safetensors weights (and shard indexes) in `folder`; refuse pickle-only ones."""
    files = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and (p.name.endswith(".safetensors") or ".safetensors.index" in p.name))
    if not any(name.endswith(".safetensors") for name in files):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(f"{folder}: only pickled weights ({pickles[0]}); evomm converts safetensors only")
        raise CheckpointError(f"{folder}: no .safetensors weights")
    return files


def _check_tokenizer_class(name) -> None:
    import transformers

    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerBase)):
        raise ConfigError(f"model_index.json: tokenizer class {name!r} is not a transformers tokenizer class")


def inspect_jsdxl(src: str | Path) -> JSDXLLayout:
    """Check that `src` is a local JSDXL repo copy evomm knows how to convert; describe it."""
    root = Path(src).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder (expected a local copy of {JSDXL_REPO_ID})")
    index = _read_json(root / "model_index.json", "every diffusers pipeline folder has one")

    cls = index.get("_class_name")
    cls_name = cls[-1] if isinstance(cls, list) and cls else cls
    if cls_name == "StableDiffusionXLPipeline":
        raise ConfigError(f"{root}: already a standard StableDiffusionXLPipeline folder; nothing to convert")
    if cls_name != JSDXL_PIPELINE:
        raise ConfigError(f"{root}: model_index.json _class_name is {cls!r}, not {JSDXL_PIPELINE}")

    known = set(COMPONENTS) | {"null_encoder"} | set(CONFIG_KEYS)
    for key, value in index.items():
        if key.startswith("_") or key in known:
            continue
        if isinstance(value, list) and value[:1] in ([None], []):
            continue  # an absent optional component ([null, null])
        raise ConfigError(f"{root}: model_index.json has unrecognised entry {key!r} = {value!r}")

    for name in COMPONENTS:
        entry = _entry(index, name)
        if entry is None or entry[0] is None:
            raise ConfigError(f"{root}: model_index.json has no {name!r} component")
        if not (root / name).is_dir():
            raise CheckpointError(f"{root / name}: missing (model_index.json names it)")
        _no_code(root / name)
        if name in EXPECTED and tuple(entry) != EXPECTED[name]:
            raise ConfigError(f"model_index.json: {name} is {entry}, expected {list(EXPECTED[name])}")

    sched = _entry(index, "scheduler")
    import diffusers

    if sched[0] != "diffusers" or not str(sched[1]).endswith("Scheduler") or not hasattr(diffusers, str(sched[1])):
        raise ConfigError(f"model_index.json: scheduler {sched} is not a diffusers scheduler")

    te = _entry(index, "text_encoder")
    if te[0] != "transformers" or te[1] not in TEXT_ENCODER_CLASSES:
        raise ConfigError(f"model_index.json: text_encoder {te} is not transformers "
                          f"{' or '.join(TEXT_ENCODER_CLASSES)}")
    te_config = _read_json(root / "text_encoder" / "config.json", "text encoder config")
    if te_config.get("model_type") != "clip_text_model":
        raise ConfigError(f"{root / 'text_encoder' / 'config.json'}: model_type "
                          f"{te_config.get('model_type')!r}, expected 'clip_text_model'")

    tok = _entry(index, "tokenizer")
    if tok[0] != "transformers":
        raise ConfigError(f"model_index.json: tokenizer {tok} is not a transformers tokenizer")
    _check_tokenizer_class(tok[1])

    unet = _read_json(root / "unet" / "config.json", "UNet config")
    text_width = int(te_config.get("hidden_size", 0))
    try:
        if unet.get("addition_embed_type") != "text_time":
            raise KeyError("addition_embed_type")
        null_width = int(unet["projection_class_embeddings_input_dim"]) - 6 * int(unet["addition_time_embed_dim"])
        cross = int(unet["cross_attention_dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{root / 'unet' / 'config.json'}: not an SDXL UNet config ({exc})") from None
    if null_width <= 0 or cross != text_width + null_width:
        raise ConfigError(f"{root / 'unet' / 'config.json'}: cross_attention_dim {cross} != text_encoder "
                          f"hidden_size {text_width} + pooled width {null_width}; not a JSDXL layout")

    _check_null_encoder(root, index, null_width)

    weight_files = {name: _safetensors_files(root / name) for name in ("unet", "vae", "text_encoder")}
    if any(".index" in name for name in weight_files["text_encoder"]):
        raise ConfigError(f"{root / 'text_encoder'}: sharded text encoder weights; not a JSDXL layout")
    return JSDXLLayout(root, index, te[1], list(tok), text_width, null_width, weight_files)


def _check_null_encoder(root: Path, index: dict, width: int) -> None:
    """A saved null encoder is accepted only if it is what its name says: zeros of the UNet's width."""
    entry = _entry(index, "null_encoder")
    if entry is not None and entry[0] is not None and entry[1] != NULL_ENCODER_CLASS:
        raise ConfigError(f"model_index.json: null_encoder is {entry}, expected {NULL_ENCODER_CLASS}")
    folder = root / "null_encoder"
    if not folder.is_dir():
        return
    config = folder / "config.json"
    if config.is_file():
        hidden = _read_json(config, "null encoder config").get("hidden_size", width)
        if hidden != width:
            raise ConfigError(f"{config}: hidden_size {hidden} != the UNet's pooled width {width}")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{folder}: pickled weights ({pickles[0]}); evomm converts safetensors only")
    from safetensors.torch import load_file

    for path in sorted(folder.glob("*.safetensors")):
        for name, tensor in load_file(str(path)).items():
            if tensor.is_floating_point() and bool(tensor.any()):
                raise ConfigError(f"{path}: null encoder tensor {name} is not all zero; not a layout evomm converts")


# ----------------------------------------------------------------------------------- writing


def _copy_component(src: Path, dst: Path, keep) -> list[str]:
    dst.mkdir(parents=True)
    skipped = []
    for path in sorted(src.iterdir()):
        if path.is_file() and keep(path.name):
            shutil.copy2(path, dst / path.name)
        else:
            skipped.append(path.name)
    return skipped


def _weights_or_json(name: str) -> bool:
    return name.endswith(".json") or name.endswith(".safetensors")


def _tokenizer_file(name: str) -> bool:
    return not name.endswith(".py") and not name.endswith(PICKLE_SUFFIXES)


def _null_encoder_config(te_config: dict, width: int) -> dict:
    """Config of the all-zero stand-in for CLIPNullTextModel (one layer, one head, narrow MLP)."""
    from transformers import CLIPTextConfig

    keep = {k: te_config[k] for k in ("vocab_size", "max_position_embeddings", "bos_token_id",
                                      "eos_token_id", "pad_token_id") if k in te_config}
    config = CLIPTextConfig(hidden_size=width, projection_dim=width, intermediate_size=1,
                            num_hidden_layers=1, num_attention_heads=1, hidden_act="quick_gelu", **keep)
    config.architectures = ["CLIPTextModelWithProjection"]
    return config


def _write_null_encoder(folder: Path, te_dir: Path, te_config: dict, width: int, files: list[str]) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import CLIPTextModelWithProjection

    config = _null_encoder_config(te_config, width)
    folder.mkdir(parents=True)
    config.to_json_file(str(folder / "config.json"))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in CLIPTextModelWithProjection(config).state_dict().items()}
    dtypes = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
    for name in files:  # one zero file per text-encoder weight file: same variants, same dtype
        with safe_open(str(te_dir / name), framework="pt") as f:
            found = [dtypes[d] for d in (f.get_slice(k).get_dtype() for k in f.keys()) if d in dtypes]
        dtype = found[0] if found else torch.float32
        zeros = {k: torch.zeros(shape, dtype=dtype) for k, shape in shapes.items()}
        save_file(zeros, str(folder / name), metadata={"format": "pt"})


def _write_text_encoder(folder: Path, src: Path, te_config: dict, files: list[str]) -> dict[str, list[str]]:
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True)
    config = dict(te_config)
    config["architectures"] = ["CLIPTextModel"]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    dropped = {}
    for name in files:
        state = load_file(str(src / name))
        unknown = sorted(k for k in state if not k.startswith("text_model.") and k != PROJECTION_KEY)
        if unknown:
            raise ConfigError(f"{src / name}: unrecognised tensor {unknown[0]!r} (expected text_model.* "
                              f"and {PROJECTION_KEY})")
        if PROJECTION_KEY in state:
            del state[PROJECTION_KEY]
            dropped[f"text_encoder/{name}"] = [PROJECTION_KEY]
        save_file(state, str(folder / name), metadata={"format": "pt"})
    return dropped


def convert_jsdxl(src: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Write the JSDXL repo copy at `src` as a standard StableDiffusionXLPipeline folder at `out`.

    Written atomically (nothing is left at `out` on error). Returns the conversion note, which
    is also saved as `out/evomm_conversion.json`.
    """
    from evomm.io.outdir import atomic_output_dir

    layout = inspect_jsdxl(src)
    root = layout.root
    te_config = _read_json(root / "text_encoder" / "config.json", "text encoder config")
    index = layout.index
    note = {
        "converted_from": str(root.resolve()),
        "source_pipeline": JSDXL_PIPELINE,
        "null_width": layout.null_width,  # 1280 (REAL_NULL_WIDTH) for the published repo
        "null_width_as_published_pipeline": layout.null_width == REAL_NULL_WIDTH,
        "text_encoder": "JSDXL text_encoder as CLIPTextModel (tensors unchanged, unused projection dropped)",
        "text_encoder_2": "all-zero CLIPTextModelWithProjection standing in for CLIPNullTextModel",
        "tokenizer_2": "copy of tokenizer",
        "dropped_tensors": {},
        "not_copied": [],
    }
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        for name in ("unet", "vae", "scheduler"):
            skipped = _copy_component(root / name, tmp / name, _weights_or_json)
            note["not_copied"] += [f"{name}/{s}" for s in skipped]
        for name in ("tokenizer", "tokenizer_2"):
            skipped = _copy_component(root / "tokenizer", tmp / name, _tokenizer_file)
            if name == "tokenizer":
                note["not_copied"] += [f"tokenizer/{s}" for s in skipped]
        te_files = [n for n in layout.weight_files["text_encoder"] if n.endswith(".safetensors")]
        note["dropped_tensors"] = _write_text_encoder(tmp / "text_encoder", root / "text_encoder", te_config, te_files)
        _write_null_encoder(tmp / "text_encoder_2", root / "text_encoder", te_config, layout.null_width, te_files)
        for path in sorted(root.iterdir()):
            if path.is_file() and path.name.upper().startswith(("LICENSE", "NOTICE")):
                shutil.copy2(path, tmp / path.name)  # the model's license travels with its weights
            elif path.name not in (*COMPONENTS, "model_index.json") and not path.name.startswith("."):
                note["not_copied"].append(path.name + ("/" if path.is_dir() else ""))
        new_index = {
            "_class_name": "StableDiffusionXLPipeline",
            "_diffusers_version": index.get("_diffusers_version", "0.23.0"),
            "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True)),
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "scheduler": list(index["scheduler"]),
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": list(layout.tokenizer_entry),
            "tokenizer_2": list(layout.tokenizer_entry),
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (tmp / "model_index.json").write_text(json.dumps(new_index, indent=2) + "\n", encoding="utf-8")
        (tmp / CONVERSION_NOTE).write_text(json.dumps(note, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return note
