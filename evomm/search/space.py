"""The contract between a search space (genome) and the optimizer.

CMA-ES sees only flat real vectors inside box bounds; a search space turns such a vector into
a candidate description (plain JSON-able data: a merge recipe, a DFS path) and back. Keeping
the optimizer ignorant of models is what lets PS, DFS and PS+DFS share one loop.

Optional, used when present: `layer_table(x) -> (row labels, rows x layers matrix)` for the
per-layer heatmap in genome.png (PS), and `encode(...)` to build a vector from readable values.
A decoded spec with `"type": "dfs"` is drawn as a layer path. Evaluators must be
deterministic given the spec: a resumed run re-evaluates candidates and must get the same
fitness.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class SearchSpace(Protocol):
    """A genome: `dim` reals in [lower, upper], decoded into a candidate spec."""

    @property
    def dim(self) -> int: ...

    @property
    def lower(self) -> np.ndarray: ...

    @property
    def upper(self) -> np.ndarray: ...

    def initial(self) -> np.ndarray:
        """Starting point x0 for the optimizer (e.g. a uniform merge)."""
        ...

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        """Vector -> candidate spec (JSON-able). Must be deterministic."""
        ...

    def labels(self) -> list[str]:
        """One human-readable name per coordinate (for plots and logs)."""
        ...


@runtime_checkable
class Evaluator(Protocol):
    """Scores candidate specs; higher is better. Holds its source weights for its lifetime."""

    def evaluate(self, spec: dict[str, Any]) -> float: ...
