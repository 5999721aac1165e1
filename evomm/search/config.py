"""The `evomm evolve` config: YAML validated by pydantic, errors reported in one line.

A config names its source checkpoints once and runs one or more stages. Each stage is one
search (a search space, a fitness, an optimizer) and may merge the best model of an earlier
stage, written `stage:NAME` — which is how PS+DFS (DFS over the PS result and a source) is
expressed:

    seed: 0
    sources: {base: ckpt/base, ja: ckpt/ja_lm, vlm: ckpt/en_vlm}
    backend: {type: inprocess}            # or {type: ray, num_workers: 4, gpus_per_worker: 1}
    fitness: {metric: vqa_rouge_ja, dataset: data/fitness, split: fitness, n_samples: 64}
    optimizer: {name: cmaes, popsize: 8, sigma0: 0.2, generations: 20}
    stages:
      - name: ps
        space: {type: ps, method: task_arithmetic, base_model: base, models: [vlm, ja]}
      - name: ps_dfs
        space: {type: dfs, models: [stage:ps, ja], repeats: 2}

A config without `stages:` but with a top-level `space:` is one stage named "search".
Stage-level `fitness` / `optimizer` / `output` replace the top-level ones for that stage.
`after_run: ["package.module:function"]` hooks run once every stage is done, called as
`function(config, run_dir, results)` with `results` = {stage name: its result.json content}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomm.errors import ConfigError

STAGE_REF = "stage:"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FitnessConfig(_Strict):
    """Which fitness function scores a candidate, and on what data."""

    metric: str = Field(description="name in the fitness registry (evomm.fitness)")
    dataset: str | None = Field(None, description="dataset path the metric reads")
    split: str | None = Field(None, description="split of the dataset used for fitness")
    n_samples: int | None = Field(None, ge=1, description="number of examples scored per candidate")
    generation: dict[str, Any] = Field(default_factory=dict, description="generation settings (max_new_tokens, ...)")
    options: dict[str, Any] = Field(default_factory=dict, description="metric-specific options")
    tasks: list[Any] | None = Field(None, description="lm_eval: [{name, weight, metric}] as mergekit-evolve writes them")


class OptimizerConfig(_Strict):
    name: Literal["cmaes", "random", "cmaes_margin"] = "cmaes"
    popsize: int | None = Field(None, ge=2)
    sigma0: float = Field(0.2, gt=0)
    generations: int | None = Field(None, ge=1)
    max_evaluations: int | None = Field(None, ge=1)
    seed: int | None = Field(None, description="defaults to the config's seed")

    @model_validator(mode="after")
    def _bounded(self) -> "OptimizerConfig":
        if self.generations is None and self.max_evaluations is None:
            raise ValueError("set generations or max_evaluations")
        return self


class BackendConfig(_Strict):
    type: Literal["inprocess", "ray"] = "inprocess"
    num_workers: int = Field(1, ge=1, description="Ray actors (one per GPU or CPU slot)")
    gpus_per_worker: float = Field(0.0, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    address: str | None = Field(None, description="Ray cluster address; None starts a local one")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance")


class PSSpaceConfig(_Strict):
    type: Literal["ps"] = "ps"
    method: str  # any merge method evomm registers (evomm.merge.methods.METHODS)
    models: list[str] = Field(min_length=1)
    base_model: str | None = None
    num_layers: int | None = Field(None, ge=1, description="default: read from the first model's config")
    layers_per_group: int = Field(1, ge=1)
    groups: list[list[int]] | None = None
    filters: list[str] = Field(default_factory=list)
    extra_filters: list[str] = Field(default_factory=list)
    weight_bounds: tuple[float, float] = (0.0, 1.0)
    density_min: float = Field(0.05, gt=0, le=1)
    initial_values: dict[str, float] = Field(default_factory=dict)
    smooth: bool = Field(False, description="one value per group, interpolated between groups (mergekit-evolve's smooth)")
    last_group_filters: list[str] = Field(default_factory=list,
                                          description="tensors outside the layers that take the last group's values")
    parameters: dict[str, Any] = Field(default_factory=dict, description="fixed recipe-level parameters")
    dtype: str | None = None
    evomm: dict[str, Any] = Field(default_factory=dict, description="recipe `evomm:` section (keep_from, ...)")

    @model_validator(mode="after")
    def _method_inputs(self) -> "PSSpaceConfig":
        from evomm.search.ps_space import METHOD_PARAMETERS, NEEDS_BASE

        if self.method not in METHOD_PARAMETERS:
            raise ValueError(f"method: unknown merge method {self.method!r} (known: {', '.join(sorted(METHOD_PARAMETERS))})")
        if self.method in NEEDS_BASE and not self.base_model:
            raise ValueError(f"method {self.method} needs a base_model")
        if self.method == "slerp" and len([m for m in self.models if m != self.base_model]) != 1:
            raise ValueError("slerp merges exactly one of `models` into base_model")
        lo, hi = self.weight_bounds
        if not lo < hi:
            raise ValueError(f"weight_bounds: lower {lo} must be below upper {hi}")
        return self


class DFSSpaceConfig(BaseModel):
    """Options of the DFS genome; passed on to `evomm.search.dfs_space` as they are."""

    model_config = ConfigDict(extra="allow")
    type: Literal["dfs"] = "dfs"
    models: list[str] = Field(min_length=1)


class OutputConfig(_Strict):
    save_model: bool = True
    plots: bool = True


class StageConfig(_Strict):
    name: str = "search"
    space: PSSpaceConfig | DFSSpaceConfig = Field(discriminator="type")
    fitness: FitnessConfig | None = None
    optimizer: OptimizerConfig | None = None
    output: OutputConfig | None = None


class EvolveConfig(_Strict):
    name: str | None = None
    seed: int = 0
    num_threads: int = Field(1, ge=1, description="torch threads per evaluator")
    device: str = "cpu"
    architecture: str | None = Field(None, description="adapter name; default: detected from the checkpoints")
    sources: dict[str, str] = Field(min_length=1, description="name -> checkpoint path")
    fitness: FitnessConfig | None = None
    optimizer: OptimizerConfig | None = None
    backend: BackendConfig = Field(default_factory=BackendConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    space: PSSpaceConfig | DFSSpaceConfig | None = Field(None, discriminator="type")
    stages: list[StageConfig] = Field(default_factory=list)
    # pipeline-specific sections (e.g. a held-out evaluation) that other tools read
    extras: dict[str, Any] = Field(default_factory=dict)
    # "module:function" hooks run after the last stage as f(config, run_dir, results), e.g. a
    # held-out evaluation writing RUN_DIR/report.md; `evomm evolve` then does all of a pipeline
    after_run: list[str] = Field(default_factory=list)
    # set by `load_config`: the config file's folder (relative paths in it are relative to it)
    config_dir: str | None = None

    @model_validator(mode="after")
    def _normalise_stages(self) -> "EvolveConfig":
        if self.space is not None:
            if self.stages:
                raise ValueError("give either a top-level `space` (one stage) or `stages`, not both")
            self.stages = [StageConfig(name="search", space=self.space)]
            self.space = None
        if not self.stages:
            raise ValueError("no search: add `stages:` or a top-level `space:`")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        seen: set[str] = set()
        for stage in self.stages:
            if stage.output is None:
                stage.output = self.output
            if stage.fitness is None:
                if self.fitness is None:
                    raise ValueError(f"stage {stage.name!r}: no `fitness` (none at the top level either)")
                stage.fitness = self.fitness
            if stage.optimizer is None:
                if self.optimizer is None:
                    raise ValueError(f"stage {stage.name!r}: no `optimizer` (none at the top level either)")
                stage.optimizer = self.optimizer
            refs = list(stage.space.models)
            if isinstance(stage.space, PSSpaceConfig) and stage.space.base_model:
                refs.append(stage.space.base_model)
            for ref in refs:
                if ref.startswith(STAGE_REF):
                    if ref[len(STAGE_REF):] not in seen:
                        raise ValueError(f"stage {stage.name!r}: {ref!r} names no earlier stage")
                elif ref not in self.sources:
                    raise ValueError(f"stage {stage.name!r}: model {ref!r} is not one of sources {sorted(self.sources)}")
            seen.add(stage.name)
        return self


def read_config_data(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The config file as a mapping, with `--set KEY=VALUE` overrides applied."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    apply_overrides(raw, overrides or [])
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Set `a.b.0.c=VALUE` items in place (VALUE read as YAML): the same recipe with other
    paths, budgets or device, without editing the file (e.g. `sources.llava=/data/llava`)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. sources.llava=/data/llava")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
        node: Any = raw
        parts = key.strip().split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {where} is not an index of a list of {len(node)}")
                index: Any = int(part)
            elif isinstance(node, dict):
                index = part
                if not last and index not in node:
                    node[index] = {}
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a mapping or list")
            if last:
                node[index] = value
            else:
                node = node[index]


def load_config(path: str | Path, overrides: list[str] | None = None, mergekit_cli: Any = None) -> EvolveConfig:
    """Read and validate an evolve config; relative source paths are relative to the file.

    A mergekit-evolve file (`genome:` + `tasks:`) is first translated into the evomm config with
    its meaning (`evomm.search.mergekit_evolve`; `mergekit_cli` carries its command-line options).
    `overrides`: `KEY=VALUE` items applied before validation (see `apply_overrides`)."""
    from evomm.search.mergekit_evolve import is_mergekit_evolve, translate

    path = Path(path)
    raw = read_config_data(path)
    if is_mergekit_evolve(raw):
        raw = translate(raw, path.parent, mergekit_cli, where=str(path))
    elif mergekit_cli is not None and mergekit_cli.model_fields_set:
        raise ConfigError(f"{path}: --max-fevals, --sigma0, --task-search-path, --batch-size and "
                          "--force-population-size are for mergekit-evolve configs; set the optimizer "
                          "and fitness in the evomm config (or with --set)")
    apply_overrides(raw, overrides or [])
    config = parse_config(raw, where=str(path))
    config.config_dir = str(path.parent.resolve())
    config.sources = {
        name: str((path.parent / src).resolve()) if _is_relative_path(src, path.parent) else src
        for name, src in config.sources.items()
    }
    for stage in config.stages:  # a dataset next to the config is found from any working directory
        if stage.fitness and stage.fitness.dataset and _is_relative_path(stage.fitness.dataset, path.parent):
            stage.fitness = stage.fitness.model_copy(
                update={"dataset": str((path.parent / stage.fitness.dataset).resolve())})
    return config


def _is_relative_path(src: str, base: Path) -> bool:
    return not Path(src).is_absolute() and (base / src).exists()


def parse_config(raw: dict[str, Any], where: str = "config") -> EvolveConfig:
    """Validate a config mapping, turning pydantic's report into one clear line."""
    try:
        return EvolveConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        # drop the union tag pydantic inserts after `space` (space.ps.method -> space.method)
        parts = [p for i, p in enumerate(parts) if not (i and parts[i - 1] == "space" and p in ("ps", "dfs"))]
        loc = ".".join(parts)
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where}: {loc + ': ' if loc else ''}{msg}{more}") from None
