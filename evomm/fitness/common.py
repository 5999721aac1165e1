"""Pieces the LLM fitness functions share: the seeded subset, the tokenizer, relative paths."""

from __future__ import annotations

import random
from pathlib import Path

from evomm.errors import ConfigError
from evomm.fitness.registry import FitnessContext


def seeded_indices(total: int, n: int | None, seed: int) -> list[int]:
    """The same `n` of `total` items for every candidate, in file order (all when n is None)."""
    if n is None or n >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), n))


def tokenizer_path(ctx: FitnessContext) -> str:
    """`options.tokenizer` (a source name or a path), else the space's first model."""
    name = ctx.options.get("tokenizer")
    if name:
        return ctx.sources.get(str(name), str(name))
    models = list(ctx.space.get("models") or [])
    if not models:
        raise ConfigError("fitness.options.tokenizer: name the model whose tokenizer reads the problems")
    return str(models[0])


def config_relative(path: str | Path, ctx: FitnessContext) -> Path:
    """`path` as given when it exists or is absolute, else relative to the config's folder."""
    path = Path(path)
    if not path.is_absolute() and ctx.config_dir and not path.exists() and (Path(ctx.config_dir) / path).exists():
        return Path(ctx.config_dir) / path
    return path
