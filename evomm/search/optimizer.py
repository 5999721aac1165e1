"""Ask/tell optimizers over a box-bounded real vector: CMA-ES and a random-search baseline.

The optimizer knows nothing about models: it proposes vectors (`ask`), receives one fitness
per vector (`tell`, higher is better) and keeps its own random state, so that the run loop can
checkpoint it between generations and a resumed run proposes exactly the same vectors.
Both optimizers share `popsize` and are driven the same number of generations by the run
loop, which is what makes the random baseline a fair comparison at equal budget.
"""

from __future__ import annotations

import math
import pickle
from typing import Any, Protocol

import numpy as np


class Optimizer(Protocol):
    """What the run loop needs from an optimizer."""

    popsize: int

    def ask(self) -> list[np.ndarray]:
        """The next generation of candidate vectors (inside the bounds)."""
        ...

    def tell(self, xs: list[np.ndarray], fitnesses: list[float]) -> None:
        """Report one finite fitness per vector asked (higher is better)."""
        ...

    def dumps(self) -> bytes:
        """Serialised state, enough to continue exactly where it stands."""
        ...


class CMAESOptimizer:
    """CMA-ES (the `cma` package) maximising fitness inside box bounds.

    `cma` minimises, so fitness is negated on `tell`. Its sampling uses a private
    `numpy.random.RandomState` seeded from `seed` (not numpy's global one), so nothing else in
    the process can shift the samples and the pickled state carries the generator with it.
    """

    def __init__(
        self,
        x0: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        *,
        sigma0: float = 0.2,
        popsize: int | None = None,
        seed: int = 0,
    ) -> None:
        import cma

        x0 = np.clip(np.asarray(x0, dtype=float), lower, upper)
        self._rng = np.random.RandomState(seed)
        opts = {
            "bounds": [list(map(float, lower)), list(map(float, upper))],
            "seed": np.nan,  # do not touch numpy's global generator
            "randn": self._rng.randn,
            "verbose": -9,
            # the run loop decides when to stop (generations / evaluation budget)
            "tolfun": 0,
            "tolx": 0,
            "tolfunhist": 0,
            "tolstagnation": int(1e9),
            "tolflatfitness": int(1e9),
        }
        if popsize:
            opts["popsize"] = int(popsize)
        self._es = cma.CMAEvolutionStrategy(list(x0), float(sigma0), opts)
        self.popsize = int(self._es.popsize)
        self._lower, self._upper = np.asarray(lower, float), np.asarray(upper, float)

    def ask(self) -> list[np.ndarray]:
        # the bound handler maps samples into the box; clip guards float round-off
        return [np.clip(np.asarray(x, float), self._lower, self._upper) for x in self._es.ask()]

    def tell(self, xs: list[np.ndarray], fitnesses: list[float]) -> None:
        self._es.tell([list(x) for x in xs], [-float(f) for f in fitnesses])

    @property
    def mean(self) -> np.ndarray:
        """The distribution mean mapped into the bounds (CMA-ES's current best guess)."""
        return np.asarray(self._es.result.xfavorite, float)

    def dumps(self) -> bytes:
        # pickle is used only for our own run-state file (RUN_DIR/checkpoint.pkl), written by
        # this process; `cma` documents pickling as its way to save and restore a strategy.
        return pickle.dumps(self)


class RandomSearchOptimizer:
    """Uniform random vectors in the box, `popsize` per generation: the baseline for CMA-ES."""

    def __init__(
        self,
        x0: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        *,
        popsize: int | None = None,
        seed: int = 0,
        sigma0: float | None = None,  # accepted for a shared interface; unused
    ) -> None:
        self._lower, self._upper = np.asarray(lower, float), np.asarray(upper, float)
        self.popsize = int(popsize or default_popsize(len(self._lower)))
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self.best_x: np.ndarray | None = None
        self.best_fitness = -math.inf

    def ask(self) -> list[np.ndarray]:
        return [self._rng.uniform(self._lower, self._upper) for _ in range(self.popsize)]

    def tell(self, xs: list[np.ndarray], fitnesses: list[float]) -> None:
        for x, f in zip(xs, fitnesses):
            if f > self.best_fitness:
                self.best_x, self.best_fitness = np.asarray(x, float), float(f)

    @property
    def mean(self) -> np.ndarray | None:
        return self.best_x

    def dumps(self) -> bytes:
        # our own run-state file only (see CMAESOptimizer.dumps)
        return pickle.dumps(self)


def default_popsize(dim: int) -> int:
    """CMA-ES's default population size, 4 + floor(3 ln n)."""
    return 4 + int(3 * math.log(max(dim, 1)))


OPTIMIZERS = {"cmaes": CMAESOptimizer, "random": RandomSearchOptimizer}


def make_optimizer(
    name: str,
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    sigma0: float = 0.2,
    popsize: int | None = None,
    seed: int = 0,
) -> Any:
    """Build an optimizer from the registry by name ("cmaes" or "random")."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        from evomm.errors import ConfigError

        raise ConfigError(f"optimizer.name: unknown optimizer {name!r} (known: {sorted(OPTIMIZERS)})")
    return cls(x0, lower, upper, sigma0=sigma0, popsize=popsize, seed=seed)


def loads(data: bytes) -> Any:
    """Restore an optimizer written by `dumps` (our own checkpoint file; see `dumps`)."""
    return pickle.loads(data)  # noqa: S301 - our own run-state file, never user-supplied data
