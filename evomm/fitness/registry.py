"""Fitness functions, looked up by name.

A fitness is registered as a *factory*: `factory(ctx: FitnessContext) -> Evaluator`. The
factory runs once per evaluator (once in-process, once in each Ray actor), loads what it
needs (source weights, dataset) and returns an object whose `evaluate(spec)` scores one
candidate spec, higher is better. `ctx` is plain data so that it can travel to Ray actors.

Names resolve in this order: the registry (`register_fitness`), then "package.module:function"
(an importable factory — how a pipeline brings its own fitness without touching evomm).
Evaluators must be deterministic given the spec (seed any sampling per call): resuming a
killed run relies on it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from evomm.errors import ConfigError
from evomm.search.space import Evaluator

FitnessFactory = Callable[["FitnessContext"], Evaluator]
_REGISTRY: dict[str, FitnessFactory] = {}
# modules that register fitness functions when imported (kept lazy: they may need extras)
_PROVIDERS: dict[str, str] = {}


@dataclass
class FitnessContext:
    """What a fitness factory may use: all plain, picklable data."""

    metric: str
    sources: dict[str, str]  # source name -> checkpoint path (earlier stages included)
    space: dict[str, Any]  # the stage's search-space config (method, models, base_model, ...)
    dataset: str | None = None
    split: str | None = None
    n_samples: int | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    architecture: str | None = None
    device: str = "cpu"
    num_threads: int = 1
    seed: int = 0
    stage: str = "search"
    run_dir: str | None = None  # the stage's output folder (a fitness may keep artefacts there)
    config_dir: str | None = None  # folder of the config file (for paths relative to it)


def register_fitness(name: str) -> Callable[[FitnessFactory], FitnessFactory]:
    """Decorator: make `factory` available as `fitness: {metric: name}`."""

    def decorate(factory: FitnessFactory) -> FitnessFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def register_provider(name: str, module: str) -> None:
    """Declare that importing `module` registers fitness `name` (for optional dependencies)."""
    _PROVIDERS[name] = module


def get_fitness(name: str) -> FitnessFactory:
    """The factory registered under `name`, or imported from "module:function"."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _PROVIDERS:
        importlib.import_module(_PROVIDERS[name])
        if name in _REGISTRY:
            return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"fitness.metric: cannot import {name!r} ({exc})") from None
        if not callable(factory):
            raise ConfigError(f"fitness.metric: {name!r} is not callable")
        return factory
    known = sorted(set(_REGISTRY) | set(_PROVIDERS))
    raise ConfigError(f"fitness.metric: unknown fitness {name!r} (known: {known}, or 'module:function')")


def build_evaluator(ctx: FitnessContext) -> Evaluator:
    """Module-level (hence picklable) entry point used by backends: threads, then the factory."""
    import torch

    torch.set_num_threads(ctx.num_threads)
    return get_fitness(ctx.metric)(ctx)


# built-in fitness functions register themselves on import
register_provider("synthetic_target", "evomm.fitness.synthetic")
register_provider("synthetic_logits", "evomm.fitness.synthetic")
register_provider("sdxl_clip_score", "evomm.fitness.sdxl_clip_score")
register_provider("vqa_rouge_ja", "evomm.fitness.vqa_rouge_ja")
register_provider("math_accuracy_ja", "evomm.fitness.math_accuracy_ja")
register_provider("lm_eval", "evomm.fitness.lm_eval_harness")
