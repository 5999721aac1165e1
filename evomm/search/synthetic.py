"""`synthetic_target`: a fitness with a known answer, for testing the search itself.

The fitness of a candidate is minus the root-mean-square distance between its merged weights
and a hidden target checkpoint (typically a merge of the same sources with hidden per-layer
coefficients). The optimum is known, so a test can check that the search finds it, and each
evaluation costs one in-memory merge: no data, no forward pass.

    fitness: {metric: synthetic_target, options: {target: path/to/hidden_merge}}
"""

from __future__ import annotations

import math
from typing import Any

import torch

from evomm.errors import ConfigError
from evomm.search.fitness import FitnessContext, register_fitness


class SyntheticTargetEvaluator:
    """-RMSE(merged weights, target weights) over the merged tensors."""

    def __init__(self, target_path: str, compile: bool = False) -> None:
        from evomm.io.sources import open_source

        self._target_source = open_source(target_path)
        self._compile = compile
        self._candidates = None  # built from the first recipe (all candidates share its plan)
        self._target: dict[str, torch.Tensor] = {}

    def evaluate(self, spec: dict[str, Any]) -> float:
        if self._candidates is None:
            from evomm.search.candidates import PSCandidates

            self._candidates = PSCandidates(spec, compile=self._compile)
            for name in self._candidates.merged_names:
                if name not in self._target_source:
                    raise ConfigError(f"synthetic_target: the target checkpoint has no tensor {name}")
                self._target[name] = self._target_source.get(name).to(torch.float32)
            self._target_source.close()
        self._candidates.apply(spec)
        total, count = 0.0, 0
        for name, want in self._target.items():
            got = self._candidates.target[name]
            total += float(torch.sum((got.to(torch.float32) - want) ** 2))
            count += want.numel()
        return -math.sqrt(total / max(count, 1))


@register_fitness("synthetic_target")
def synthetic_target(ctx: FitnessContext) -> SyntheticTargetEvaluator:
    target = ctx.options.get("target")
    if not target:
        raise ConfigError("fitness.options.target: synthetic_target needs the path of the hidden target checkpoint")
    return SyntheticTargetEvaluator(str(target), compile=bool(ctx.options.get("compile", False)))
