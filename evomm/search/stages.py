"""Run the stages of an evolve config and write each stage's results.

One stage = build its search space from the config, build evaluators through the fitness
registry on the chosen backend, run the checkpointed CMA-ES / random search (`SearchRun`),
then write: best_recipe.yml (an `evomm merge` recipe, or a DFS spec), the best merged model
with a model card, fitness.png, genome.png and result.json. result.json is written last and
marks the stage complete, so a resumed run skips finished stages and continues the
unfinished one. A later stage can merge an earlier stage's model (`stage:NAME`).

A single-stage config writes into RUN_DIR itself; a multi-stage one into RUN_DIR/<stage>/.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import yaml

from evomm.errors import ConfigError, SearchError
from evomm.search.backends import make_backend
from evomm.search.config import STAGE_REF, DFSSpaceConfig, EvolveConfig, PSSpaceConfig, StageConfig
from evomm.fitness.registry import FitnessContext, build_evaluator, get_fitness
from evomm.search.optimizer import make_optimizer
from evomm.search.run import SearchResult, SearchRun, atomic_write_text

RESULT = "result.json"
BEST_RECIPE = "best_recipe.yml"
MODEL_DIR = "model"


def stage_dir(run_dir: Path, config: EvolveConfig, stage: StageConfig) -> Path:
    return run_dir if len(config.stages) == 1 else run_dir / stage.name


def resolve_model(ref: str, sources: dict[str, str]) -> str:
    """A source name or `stage:NAME` -> checkpoint path."""
    try:
        return sources[ref]
    except KeyError:
        raise ConfigError(f"model {ref!r}: not a source name, and no finished stage provides it") from None


def count_layers(path: str) -> int:
    """Layer groups of a checkpoint, as the adapter sees them (decoder layers, SDXL blocks)."""
    from evomm.adapters import checkpoint_layers

    return checkpoint_layers(path)


def build_space(space_cfg: PSSpaceConfig | DFSSpaceConfig, sources: dict[str, str], seed: int) -> Any:
    """The stage's SearchSpace, with model names resolved to checkpoint paths."""
    if isinstance(space_cfg, PSSpaceConfig):
        from evomm.search.ps_space import PSSpace

        models = [resolve_model(m, sources) for m in space_cfg.models]
        base = resolve_model(space_cfg.base_model, sources) if space_cfg.base_model else None
        num_layers = space_cfg.num_layers or count_layers(models[0])
        return PSSpace(
            method=space_cfg.method,
            models=models,
            base_model=base,
            num_layers=num_layers,
            layers_per_group=space_cfg.layers_per_group,
            groups=space_cfg.groups,
            filters=space_cfg.filters,
            extra_filters=space_cfg.extra_filters,
            weight_bounds=tuple(space_cfg.weight_bounds),
            density_min=space_cfg.density_min,
            initial_values=space_cfg.initial_values,
            smooth=space_cfg.smooth,
            last_group_filters=space_cfg.last_group_filters,
            fixed_parameters=space_cfg.parameters,
            dtype=space_cfg.dtype,
            seed=seed,
            evomm_options={k: resolve_model(v, sources) if k in ("keep_from", "tokenizer_source") else v
                           for k, v in space_cfg.evomm.items()},
        )
    try:
        from evomm.search import dfs_space
    except ImportError as exc:
        raise ConfigError(f"space.type dfs: the DFS search space is not available ({exc})") from None
    options = space_cfg.model_dump(exclude={"type", "models"})
    models = [resolve_model(m, sources) for m in space_cfg.models]
    return dfs_space.build_space(models=models, **options)


def fitness_context(config: EvolveConfig, stage: StageConfig, sources: dict[str, str],
                    run_dir: Path | None = None) -> FitnessContext:
    """The plain-data context a stage's fitness factory gets (model names resolved to paths)."""
    fit = stage.fitness
    assert fit is not None
    space = stage.space.model_dump()
    space["models"] = [resolve_model(m, sources) for m in stage.space.models]
    if space.get("base_model"):
        space["base_model"] = resolve_model(space["base_model"], sources)
    return FitnessContext(
        metric=fit.metric,
        sources=dict(sources),
        space=space,
        dataset=fit.dataset,
        split=fit.split,
        n_samples=fit.n_samples,
        generation=dict(fit.generation),
        options={**fit.options, **({"tasks": list(fit.tasks)} if fit.tasks else {})},
        architecture=config.architecture,
        device=config.device,
        num_threads=config.num_threads,
        seed=config.seed,
        stage=stage.name,
        run_dir=str(run_dir) if run_dir is not None else None,
        config_dir=config.config_dir,
    )


_fitness_context = fitness_context  # the name other modules first imported


def run_stage(
    config: EvolveConfig,
    stage: StageConfig,
    run_dir: Path,
    sources: dict[str, str],
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume, or skip if finished) one stage; returns its result.json content."""
    out = stage_dir(run_dir, config, stage)
    done = out / RESULT
    if resume and done.exists():
        log(f"[{stage.name}] already complete, skipping")
        return json.loads(done.read_text())
    space = build_space(stage.space, sources, config.seed)
    ctx = fitness_context(config, stage, sources, run_dir=out)
    get_fitness(ctx.metric)  # an unknown metric fails now, not at the first evaluation
    opt_cfg = stage.optimizer
    assert opt_cfg is not None
    seed = config.seed if opt_cfg.seed is None else opt_cfg.seed
    optimizer_factory = functools.partial(
        make_optimizer, opt_cfg.name, space.initial(), space.lower, space.upper,
        sigma0=opt_cfg.sigma0, popsize=opt_cfg.popsize, seed=seed, steps=getattr(space, "discrete_steps", None),
    )
    backend_cfg = config.backend
    factory = functools.partial(build_evaluator, ctx)
    if backend_cfg.type == "ray":
        backend = make_backend(
            "ray", factory, num_workers=backend_cfg.num_workers, gpus_per_worker=backend_cfg.gpus_per_worker,
            cpus_per_worker=backend_cfg.cpus_per_worker, num_threads=config.num_threads,
            address=backend_cfg.address, num_cpus=backend_cfg.num_cpus,
        )
    else:
        backend = make_backend("inprocess", factory)
    settings = {
        "space": stage.space.model_dump(), "fitness": stage.fitness.model_dump() if stage.fitness else None,
        # the budget is left out: resuming an unfinished run with a larger budget extends it
        "optimizer": opt_cfg.model_dump(exclude={"generations", "max_evaluations"}),
        "seed": config.seed, "sources": sources, "dim": space.dim,
    }

    def on_generation(summary) -> None:
        if not progress:
            return
        mean = "-" if summary.mean is None else f"{summary.mean:.4f}"
        log(f"[{stage.name}] generation {summary.generation + 1}: best {summary.best_so_far:.4f}, "
            f"mean {mean}, failed {summary.failed}")

    log(f"[{stage.name}] {type(space).__name__} with {space.dim} coordinates, optimizer {opt_cfg.name}, "
        f"backend {backend_cfg.type}")
    try:
        result = SearchRun(
            space, optimizer_factory, backend, out,
            generations=opt_cfg.generations, max_evaluations=opt_cfg.max_evaluations,
            settings=settings, progress=progress, on_generation=on_generation,
        ).run(resume=resume)
    finally:
        backend.close()
    return write_stage_outputs(stage, space, result, out, log=log)


def write_stage_outputs(stage: StageConfig, space: Any, result: SearchResult, out: Path,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """best_recipe.yml, plots, the best model (if asked) and result.json (last: the done marker)."""
    from evomm.search import plots

    atomic_write_text(out / BEST_RECIPE, yaml.safe_dump(result.best_spec, sort_keys=False, allow_unicode=True))
    if stage.output.plots:
        plots.plot_fitness(result.history, out / "fitness.png", title=f"{stage.name}: fitness")
        plots.plot_genome(space, result.best_genome, out / "genome.png", title=f"{stage.name}: best genome")
    model_dir = None
    if stage.output.save_model:
        model_dir = out / MODEL_DIR
        save_best_model(stage, result, model_dir)
        log(f"[{stage.name}] best model written to {model_dir}")
    summary = {
        "stage": stage.name,
        "best_fitness": result.best_fitness,
        "best_genome": [float(v) for v in result.best_genome],
        "labels": space.labels(),
        "evaluations": result.evaluations,
        "history": [asdict(h) for h in result.history],
        "best_recipe": str(out / BEST_RECIPE),
        "model": str(model_dir) if model_dir else None,
    }
    atomic_write_text(out / RESULT, json.dumps(summary, indent=1))
    return summary


def save_best_model(stage: StageConfig, result: SearchResult, model_dir: Path) -> None:
    """Write the best candidate as an HF checkpoint with a model card (replaces any old one)."""
    if isinstance(stage.space, PSSpaceConfig):
        from evomm.search.export import save_ps_model

        save_ps_model(result.best_spec, model_dir, card=_card(stage, result))
    else:
        from evomm.search.export import save_dfs_model

        save_dfs_model(result.best_spec, model_dir, card=_card(stage, result))


def _card(stage: StageConfig, result: SearchResult) -> dict[str, Any]:
    return {
        "stage": stage.name,
        "fitness_metric": stage.fitness.metric if stage.fitness else None,
        "best_fitness": result.best_fitness,
        "evaluations": result.evaluations,
        "generations": len(result.history),
        "recipe": result.best_spec,
    }


def run_all(config: EvolveConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
            log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run every stage in order; `stage:NAME` sources point at finished stages' models."""
    if log is None:
        from tqdm.auto import tqdm

        log = tqdm.write  # lines above the progress bar instead of through it
    run_dir = Path(run_dir).resolve()  # recipes and specs name stage models by absolute path
    sources = dict(config.sources)
    results: dict[str, dict[str, Any]] = {}
    for stage in config.stages:
        summary = run_stage(config, stage, run_dir, sources, resume=resume, progress=progress, log=log)
        results[stage.name] = summary
        if summary.get("model"):
            sources[STAGE_REF + stage.name] = summary["model"]
        if not math.isfinite(summary["best_fitness"]):
            raise SearchError(f"stage {stage.name}: no finite best fitness")
    if len(config.stages) > 1:
        atomic_write_text(run_dir / "summary.json", json.dumps(
            {name: {k: r[k] for k in ("best_fitness", "evaluations", "best_recipe", "model")} for name, r in results.items()},
            indent=1))
    for hook in config.after_run:
        log(f"running {hook}")
        _import_hook(hook)(config, run_dir, results)
    return results


def _import_hook(name: str) -> Callable[..., Any]:
    import importlib

    module_name, _, attr = name.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"after_run: cannot import {name!r} ({exc})") from None
    if not callable(hook):
        raise ConfigError(f"after_run: {name!r} is not callable")
    return hook
