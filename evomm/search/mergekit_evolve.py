"""mergekit-evolve configs, run by `evomm evolve` unchanged.

A mergekit-evolve file (`genome:` + `tasks:`) becomes a one-stage evomm config with the same
meaning: the genome's models, method and base become a PS space, its tasks the `lm_eval`
fitness, and mergekit-evolve's command-line defaults (CMA-ES, sigma0 1/6, 100 evaluations) the
optimizer. What evomm cannot express the same way is refused with the reason.

    genome key               evomm
    models, base_model       sources + space.models / space.base_model
    merge_method             space.method (linear, task_arithmetic, ties, dare_ties; not slerp)
    layer_granularity        space.layers_per_group (0: one group for all layers)
    normalize                space.parameters.normalize (default as mergekit: on for linear/ties/dare_ties)
    allow_negative_weights   space.weight_bounds [-1, 1] (else [0, 1])
    smooth                   space.smooth (one value per group, interpolated across layers)
    filters                  space.filters (a value set per tensor-name filter, plus the rest)
    tokenizer_source         space.evomm.tokenizer_source (a model; "union" is refused)
    tasks, limit, num_fewshot, apply_chat_template, fewshot_as_multiturn
                             fitness: {metric: lm_eval, tasks, options}
    shuffle + limit          fitness.n_samples (a seeded subsample instead of a fresh shuffle)

Two differences are deliberate and documented in docs/mergekit_evolve.md: mergekit searches an
unbounded genome and folds it with abs() and a clamp, evomm searches the box those fold into
(so every genome means one recipe); and the same seed always draws the same documents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomm.errors import ConfigError

GENOME_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties")
#: mergekit's default of `normalize` when the genome leaves it unset
NORMALIZED_BY_DEFAULT = ("ties", "dare_ties", "linear")
#: tensors after the layer stack; mergekit-evolve's slices give them the last slice's values
TAIL_TENSORS = ("model.norm.", "lm_head.")


class Genome(BaseModel):
    """mergekit-evolve's `genome:` section (its fields and defaults)."""

    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(min_length=1)
    merge_method: str
    base_model: str | None = None
    tokenizer_source: str | None = None
    layer_granularity: int = Field(0, ge=0)
    normalize: bool | None = None
    allow_negative_weights: bool = False
    filters: list[str] | None = None
    smooth: bool = False

    @model_validator(mode="after")
    def _mappable(self) -> "Genome":
        if self.merge_method == "slerp":
            raise ValueError("merge_method slerp: mergekit-evolve's slerp genome (the two heaviest models per "
                             "group) has no evomm equivalent; use an evomm config with space.method: slerp")
        if self.merge_method not in GENOME_METHODS:
            raise ValueError(f"merge_method {self.merge_method!r}: mergekit-evolve knows {list(GENOME_METHODS) + ['slerp']}")
        if self.merge_method != "linear" and self.base_model is None:
            raise ValueError(f"base_model is required for {self.merge_method}")
        if self.tokenizer_source == "union":
            raise ValueError("tokenizer_source: union (a merged vocabulary) is not supported by evomm")
        lora = [m for m in self.models + [self.base_model or ""] if "+" in m]
        if lora:
            raise ValueError(f"models: LoRA references (model+lora) are not supported: {lora}")
        return self


class MergekitEvolveConfig(BaseModel):
    """The whole mergekit-evolve file."""

    model_config = ConfigDict(extra="forbid")
    genome: Genome
    tasks: list[Any] = Field(min_length=1)
    limit: int | None = Field(None, ge=1)
    num_fewshot: int | None = Field(None, ge=0)
    shuffle: bool = False
    random_init: bool = False
    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = True

    @model_validator(mode="after")
    def _mappable(self) -> "MergekitEvolveConfig":
        if self.random_init:
            raise ValueError("random_init: evomm starts every search at mergekit's default genome "
                             "(weight 1/n, density 1); remove random_init")
        return self


class MergekitCLI(BaseModel):
    """mergekit-evolve's command-line options that change the search (its defaults)."""

    max_fevals: int = Field(100, ge=1)
    sigma0: float = Field(1 / 6, gt=0)
    popsize: int | None = Field(None, ge=2, description="--force-population-size")
    batch_size: int | None = Field(None, ge=1)
    task_search_path: list[str] = Field(default_factory=list)


def is_mergekit_evolve(raw: dict[str, Any]) -> bool:
    """A mergekit-evolve file has `genome:` and `tasks:`; an evomm config has neither."""
    return isinstance(raw, dict) and "genome" in raw and "tasks" in raw


def _resolve(ref: str, config_dir: Path) -> str:
    """A path as mergekit reads it (from the working directory), else next to the config, else a hub id."""
    if Path(ref).exists():
        return str(Path(ref).resolve())
    if (config_dir / ref).exists():
        return str((config_dir / ref).resolve())
    return ref


def _source_names(refs: list[str]) -> dict[str, str]:
    """Short unique source names (the folder or repo name) for model references."""
    names: dict[str, str] = {}
    for ref in refs:
        if ref in names:
            continue
        stem = Path(ref.rstrip("/")).name or "model"
        name, i = stem, 2
        while name in names.values():
            name, i = f"{stem}_{i}", i + 1
        names[ref] = name
    return names


def _num_layers(path: str) -> int:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"genome.models: cannot read the config of {path} ({str(exc).splitlines()[0]})") from None
    text = getattr(config, "text_config", None) or config
    if not str((getattr(config, "architectures", None) or ["?"])[0]).endswith("ForCausalLM"):
        raise ConfigError(f"genome.models: {path} is not a causal LM; mergekit-evolve configs are mapped for LLMs")
    return int(text.num_hidden_layers)


def translate(raw: dict[str, Any], config_dir: str | Path, cli: MergekitCLI | None = None,
              where: str = "config") -> dict[str, Any]:
    """The evomm config (a mapping, before validation) that runs the mergekit-evolve file `raw`."""
    cli = cli or MergekitCLI()
    try:
        mk = MergekitEvolveConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{where} (mergekit-evolve): {loc + ': ' if loc else ''}"
                          f"{err['msg'].removeprefix('Value error, ')}") from None
    config_dir = Path(config_dir)
    genome = mk.genome
    refs = [_resolve(m, config_dir) for m in genome.models]
    base = _resolve(genome.base_model, config_dir) if genome.base_model else None
    names = _source_names(refs + ([base] if base else []))
    num_layers = _num_layers(refs[0])
    granularity = genome.layer_granularity or num_layers
    if num_layers % granularity:
        raise ConfigError(f"{where}: genome.layer_granularity {genome.layer_granularity} does not divide "
                          f"the {num_layers} layers of {genome.models[0]}")
    normalize = genome.normalize if genome.normalize is not None else genome.merge_method in NORMALIZED_BY_DEFAULT
    space: dict[str, Any] = {
        "type": "ps",
        "method": genome.merge_method,
        "models": [names[r] for r in refs],
        "layers_per_group": granularity,
        "filters": list(genome.filters or []),
        "weight_bounds": [-1.0, 1.0] if genome.allow_negative_weights else [0.0, 1.0],
        "initial_values": {"weight": 1.0 / len(refs), "density": 1.0},
        "parameters": {"normalize": normalize},
        "smooth": genome.smooth,
        "last_group_filters": [] if genome.smooth else list(TAIL_TENSORS),
        "dtype": "bfloat16",
    }
    if base:
        space["base_model"] = names[base]
    if genome.tokenizer_source and genome.tokenizer_source != "base":
        space["evomm"] = {"tokenizer_source": _resolve(genome.tokenizer_source, config_dir)}
    options: dict[str, Any] = {
        "apply_chat_template": mk.apply_chat_template,
        "fewshot_as_multiturn": mk.fewshot_as_multiturn,
        "tokenizer": names[base] if base else names[refs[0]],
        "dtype": "bfloat16",
    }
    if cli.task_search_path:
        options["include_path"] = [_resolve(p, config_dir) for p in cli.task_search_path]
    if mk.num_fewshot is not None:
        options["num_fewshot"] = mk.num_fewshot
    if cli.batch_size is not None:
        options["batch_size"] = cli.batch_size
    fitness: dict[str, Any] = {"metric": "lm_eval", "tasks": list(mk.tasks), "options": options}
    if mk.limit is not None:
        if mk.shuffle:
            fitness["n_samples"] = mk.limit
        else:
            options["limit"] = mk.limit
    optimizer = {"name": "cmaes", "sigma0": cli.sigma0, "max_evaluations": cli.max_fevals}
    if cli.popsize:
        optimizer["popsize"] = cli.popsize
    return {
        "name": "mergekit_evolve",
        "sources": {name: ref for ref, name in names.items()},
        "fitness": fitness,
        "optimizer": optimizer,
        "space": space,
        "extras": {"mergekit_evolve": json.loads(json.dumps(raw, default=str))},
    }
