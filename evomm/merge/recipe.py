"""The merge recipe: mergekit's YAML format with the same meaning, plus an `evomm:` section.

A recipe names the models, the method, and its parameters. A parameter value may be

- a scalar (`weight: 0.5`),
- a gradient list interpolated across layers like mergekit (`weight: [0, 0.5, 1]`: layer i of
  n sits at t = i/(n-1); tensors outside the layers sit at t = 0),
- filtered by tensor name: a list of `{filter: self_attn, value: ...}` entries, the first whose
  filter is a substring of the tensor name wins (no filter / `*` matches everything).

For an SDXL UNet the "layers" are its blocks (see `evomm.adapters.sdxl`), so a list with one
value per block gives each block its value.

mergekit's `slices:` form means what it means in mergekit: each slice merges its sources'
`layer_range`s (of equal length) into as many output layers, and the output stacks the
slices in order (a "frankenmerge" can be deeper than any source). The embeddings are merged
from the first slice's sources, the final norm and head from the last slice's; within a
slice a gradient runs over its layers (t = i/(n-1), t = 1 for a one-layer slice), and
parameters are looked up in a source's own `parameters:`, then the slice's, then the
top-level ones. One slice that covers every layer of every source is the same as `models:`.

Per-model parameters (e.g. `weight`, `density`) are looked up in the model's `parameters:`
first, then in the top-level `parameters:`; method-wide ones (`normalize`, `lambda`, `t`) only
at the top level. Method parameters come from the registry in `evomm.merge.methods`.

The `evomm:` section (all optional) covers what mergekit cannot express:

    evomm:
      architecture: auto        # auto | llm | llava_x_llm | sdxl_unet (auto detects)
      keep_from: path/to/vlm    # source of the output's config and of every unmerged part
                                # (vision tower, projector, image_newline); default: the first
                                # VLM among the models, else base_model, else the first model
      tokenizer_source: path    # tokenizer files copied to the output (default: keep_from)
      check_tokenizers: true    # refuse to merge embeddings of models whose tokenizers differ
      seed: 0                   # DARE's random drop mask
      shard_size: 5GB           # output shard size
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from evomm.errors import ConfigError
from evomm.merge.method_info import MethodInfo, known_methods, method_info

Scalar = Union[bool, int, float, str]


class ConditionalValue(BaseModel):
    """`{filter: NAME_SUBSTRING, value: ...}`: applies to tensors whose name contains filter."""

    model_config = ConfigDict(extra="forbid")
    value: Union[Scalar, list[Scalar]]
    filter: str | None = None


ParameterSetting = Union[Scalar, list[Scalar], ConditionalValue, list[ConditionalValue]]


def _model_ref(value: Any) -> Any:
    """mergekit also writes a model as `{path: ...}` or `{model: {path: ...}}`."""
    if isinstance(value, dict) and "path" in value:
        return value["path"]
    if isinstance(value, dict) and isinstance(value.get("model"), dict):
        return value["model"].get("path", value)
    return value


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, ParameterSetting] | None = None

    _model_ref = field_validator("model", mode="before")(lambda cls, v: _model_ref(v))


class SliceSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, ParameterSetting] | None = None

    _model_ref = field_validator("model", mode="before")(lambda cls, v: _model_ref(v))


class SliceDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[SliceSource]
    base_model: str | None = None
    parameters: dict[str, ParameterSetting] | None = None


class Segment:
    """One slice of a `slices:` recipe: its own recipe (sources, base, parameters) and, per
    source, the first layer it takes."""

    def __init__(self, recipe: "Recipe", starts: dict[str, int], length: int):
        self.recipe, self.starts, self.length = recipe, starts, length


class EvommSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    architecture: Literal["auto", "llm", "llava_x_llm", "sdxl_unet"] = "auto"
    keep_from: str | None = None
    tokenizer_source: str | None = None
    check_tokenizers: bool = True
    seed: int = 0
    shard_size: Union[str, int] = "5GB"


_DTYPES = ("float32", "float16", "bfloat16", "fp32", "fp16", "bf16")


class Recipe(BaseModel):
    """A validated merge recipe. Build with `load_recipe(path)` or `Recipe.from_dict(data)`."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    models: list[ModelEntry] | None = None
    slices: list[SliceDefinition] | None = None
    base_model: str | None = None
    parameters: dict[str, ParameterSetting] | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    chat_template: str | None = None
    name: str | None = None
    evomm: EvommSection = Field(default_factory=EvommSection)
    _resolver: Any = PrivateAttr(default=None)
    #: from a `slices:` recipe: model -> the layer range it named (checked against the model)
    _layer_ranges: dict[str, tuple[int, int]] = PrivateAttr(default_factory=dict)
    #: from a `slices:` recipe of several slices (or partial ranges): the slices in output order
    _segments: list[Segment] | None = PrivateAttr(default=None)

    @field_validator("base_model", mode="before")
    @classmethod
    def _base_ref(cls, value: Any) -> Any:
        return value["path"] if isinstance(value, dict) and "path" in value else value

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in _DTYPES:
            raise ValueError(f"unknown dtype {value!r} (expected one of {', '.join(_DTYPES)})")
        return value

    @field_validator("tokenizer_source")
    @classmethod
    def _tokenizer_source(cls, value: str | None) -> str | None:
        if value == "union":
            raise ValueError("'union' is not supported; name a model (or 'base') to copy the tokenizer from")
        return value

    @field_validator("merge_method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value not in known_methods():
            raise ValueError(f"unknown merge method {value!r} (known: {', '.join(known_methods())})")
        return value

    @model_validator(mode="after")
    def _structure(self) -> "Recipe":
        if self.slices is not None:
            self._fold_slices()
        if not self.models:
            raise ValueError("models: at least one model is required")
        info = self.method
        _check_names("parameters", self.parameters, info, top_level=True)
        if self._segments is not None and len(self._segments) > 1:
            return self  # each slice was validated as a recipe of its own
        for i, entry in enumerate(self.models):
            _check_names(f"models[{i}].parameters", entry.parameters, info, top_level=False)
        refs = self.input_models()
        if len(set(refs)) != len(refs):
            raise ValueError("models: the same model is listed twice")
        if info.needs_base and self.base_model is None:
            raise ValueError(f"base_model: required by merge_method {self.merge_method}")
        has_base = info.takes_base(self.base_model)
        merged = len(refs) - int(has_base)
        if merged < info.min_models or (info.max_models is not None and merged > info.max_models):
            want = (f"exactly {info.min_models}" if info.max_models == info.min_models
                    else f"at least {info.min_models}")
            besides = " besides base_model" if has_base else ""
            raise ValueError(f"models: {self.merge_method} merges {want} model(s){besides}, got {merged}")
        for name in info.model_params:
            if name in info.defaults:
                continue
            for i, ref in enumerate(refs):
                if has_base and ref == self.base_model:
                    continue
                own = (self.model_entry(ref).parameters or {}) if self.model_entry(ref) else {}
                if name not in own and name not in (self.parameters or {}):
                    where = f"models[{i}]" if self.model_entry(ref) else "base_model"
                    raise ValueError(f"{where}.parameters.{name}: required by {self.merge_method} "
                                     f"for {ref} (set it for the model or under parameters:)")
        return self

    def _fold_slices(self) -> None:
        """`slices:` as segments (one recipe per slice), and `models:` as their union.

        One slice is also folded into `models:` (with its ranges kept): when it covers every
        layer, the planner treats the recipe exactly like a `models:` recipe."""
        if self.models:
            raise ValueError("slices: give either models: or slices:, not both")
        if not self.slices:
            raise ValueError("slices: at least one slice is required")
        segments = []
        for i, piece in enumerate(self.slices):
            if not piece.sources:
                raise ValueError(f"slices[{i}].sources: at least one source is required")
            for a, b in (s.layer_range for s in piece.sources):
                if not 0 <= a < b:
                    raise ValueError(f"slices[{i}].sources: layer_range [{a}, {b}] is empty or negative")
            lengths = {b - a for a, b in (s.layer_range for s in piece.sources)}
            if len(lengths) > 1:
                raise ValueError(f"slices[{i}].sources: every layer_range must have the same length")
            refs = [s.model for s in piece.sources]
            if len(set(refs)) != len(refs):
                raise ValueError(f"slices[{i}].sources: a model is named twice in one slice")
            base = piece.base_model if piece.base_model is not None else self.base_model
            sub = {"merge_method": self.merge_method, "base_model": base, "dtype": self.dtype,
                   "evomm": self.evomm.model_dump(),
                   # precedence as in mergekit: a source's own parameters, then the slice's, then global
                   "parameters": {**(self.parameters or {}), **(piece.parameters or {})} or None,
                   "models": [{"model": s.model, "parameters": s.parameters} for s in piece.sources]}
            try:
                sub_recipe = Recipe.model_validate(sub)
            except ValidationError as exc:
                raise ValueError(f"slices[{i}]: {_first_error(exc)}") from None
            segments.append(Segment(sub_recipe, {s.model: s.layer_range[0] for s in piece.sources}, lengths.pop()))
        if len(segments) == 1:
            (piece,) = self.slices
            if piece.base_model is not None:
                if self.base_model not in (None, piece.base_model):
                    raise ValueError("slices[0].base_model: differs from base_model")
                self.base_model = piece.base_model
            self.parameters = segments[0].recipe.parameters
            self.models = [ModelEntry(model=s.model, parameters=s.parameters) for s in piece.sources]
            self._layer_ranges = {s.model: tuple(s.layer_range) for s in piece.sources}
        else:
            seen: dict[str, ModelEntry] = {}
            for segment in segments:
                for ref in segment.recipe.input_models():
                    seen.setdefault(ref, ModelEntry(model=ref))
            self.models = list(seen.values())
        self._segments = segments
        self.slices = None

    # -- queries -------------------------------------------------------------------------

    @property
    def method(self) -> MethodInfo:
        return method_info(self.merge_method)

    @property
    def segments(self) -> list[Segment] | None:
        """The slices of a `slices:` recipe, in output order (None for a `models:` recipe)."""
        return self._segments

    def input_models(self) -> list[str]:
        """Models in merge order: `models:` as listed, then base_model if not among them."""
        refs = [m.model for m in self.models or []]
        if self.base_model is not None and self.base_model not in refs:
            refs.append(self.base_model)
        return refs

    def model_entry(self, ref: str) -> ModelEntry | None:
        return next((m for m in self.models or [] if m.model == ref), None)

    def output_dtype(self) -> str | None:
        name = self.out_dtype or self.dtype
        return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(name, name)

    @classmethod
    def from_dict(cls, data: Any, source: str = "recipe") -> "Recipe":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_first_error(exc)}") from None

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _check_names(where: str, params: dict | None, info: MethodInfo, top_level: bool) -> None:
    for name in params or {}:
        if name in info.model_params or name in info.ignored_model_params or (
                top_level and name in info.global_params):
            continue
        if not top_level and name in info.global_params:
            raise ValueError(f"{where}.{name}: {name!r} applies to the whole merge; "
                             "set it under the top-level parameters:")
        known = ", ".join(sorted(set(info.model_params) | (set(info.global_params) if top_level else set())))
        raise ValueError(f"{where}.{name}: unknown parameter for {info.name} (known: {known})")


_UNION_BRANCHES = {"bool", "int", "float", "str", "ConditionalValue"}


def _first_error(exc: ValidationError) -> str:
    """One line: the key path and the problem of pydantic's first error."""
    err = exc.errors()[0]
    parts: list[str] = []
    for p in err["loc"]:
        if isinstance(p, int):
            if parts:
                parts[-1] += f"[{p}]"
        elif p not in _UNION_BRANCHES and "[" not in p:  # skip pydantic's union branch names
            parts.append(p)
    loc = ".".join(parts)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{loc}: {msg}" if loc else msg


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe; errors name the key and the problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    return Recipe.from_dict(data, source=str(path))
