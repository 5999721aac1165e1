"""Cheap fitness functions for engine tests, importable as "search_fitness:NAME".

They score a PS recipe without any model, so the tests of the search loop (resume, failures,
backends) exercise the engine alone and run in seconds. Deterministic given the spec.
"""

from __future__ import annotations

import math
import time

import numpy as np


def recipe_values(spec: dict) -> np.ndarray:
    """All per-layer weights of a PS recipe, model by model."""
    values: list[float] = []
    for model in spec["models"]:
        weight = model.get("parameters", {}).get("weight")
        if weight is None:
            continue
        values += weight if isinstance(weight, list) else [weight]
    return np.asarray(values, dtype=float)


class QuadraticEvaluator:
    """-(distance to a fixed point)^2, with optional slowness and injected failures."""

    def __init__(self, options: dict) -> None:
        self.target = float(options.get("target", 0.3))
        self.sleep = float(options.get("sleep", 0.0))
        self.fail = options.get("fail", "none")  # none | raise | nan | oom | all

    def evaluate(self, spec: dict) -> float:
        if self.sleep:
            time.sleep(self.sleep)
        values = recipe_values(spec)
        if self.fail == "all":
            raise ValueError("every candidate fails")
        if values[0] > 0.5:  # about half of the candidates hit the injected failure
            if self.fail == "raise":
                raise RuntimeError("injected failure")
            if self.fail == "nan":
                return math.nan
            if self.fail == "oom":
                raise MemoryError("injected: cannot allocate")
        return -float(np.sum((values - self.target) ** 2))


def quadratic(ctx) -> QuadraticEvaluator:
    return QuadraticEvaluator(ctx.options)


def write_marker(config, run_dir, results) -> None:
    """An after_run hook for tests: record what it was given."""
    import json
    from pathlib import Path

    (Path(run_dir) / "after_run.json").write_text(json.dumps({"stages": sorted(results), "seed": config.seed}))
