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


class LazyCandidate:
    """The one in-memory model a model-running fitness scores every candidate with.

    Built from the first spec (its plan and sources serve every later one), then each `apply`
    writes a candidate into it. `options` are the fitness options: `merge_device`, `compile`."""

    def __init__(self, device: str = "cpu", dtype=None, options: dict | None = None) -> None:
        self.device, self.dtype, self.options = device, dtype, dict(options or {})
        self._candidate = None

    @property
    def model(self):
        return None if self._candidate is None else self._candidate.model

    def apply(self, spec: dict):
        if self._candidate is None:
            import torch

            from evomm.search.candidates import CandidateModel

            self._candidate = CandidateModel(spec, device=self.device, dtype=self.dtype or torch.float32,
                                             merge_device=self.options.get("merge_device"),
                                             compile=self.options.get("compile"))
        return self._candidate.apply(spec)
