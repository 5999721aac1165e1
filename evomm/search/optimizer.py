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


class MarginCMAESOptimizer:
    """CMA-ES with Margin (the `cmaes` package's CMAwM) for genomes that mix binary and real
    coordinates, as a DFS genome does (layer in or out of the path; log-scales).

    `steps[i] > 0` marks coordinate i as discrete on the grid lower, lower + step, ... within
    its bounds (a DFS inclusion value: {-1, 1}, step 2); 0 marks a continuous one. The margin
    keeps every discrete choice possible, which plain CMA-ES loses once its variance along a
    binary coordinate collapses. Maximises; `cmaes` minimises, so fitness is negated.
    """

    def __init__(
        self,
        x0: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        *,
        steps: np.ndarray | None = None,
        sigma0: float = 0.2,
        popsize: int | None = None,
        seed: int = 0,
    ) -> None:
        from cmaes import CMAwM

        lower, upper = np.asarray(lower, float), np.asarray(upper, float)
        if steps is None or not np.any(np.asarray(steps) > 0):
            from evomm.errors import ConfigError

            raise ConfigError("optimizer.name cmaes_margin: the search space has no discrete coordinates "
                              "(it is for DFS genomes); use cmaes")
        steps = np.asarray(steps, float)
        x0 = np.clip(np.asarray(x0, float), lower, upper)
        scale = np.where(steps > 0, 1.0, upper - lower)  # sigma0 is relative to each box, as for cma
        self._es = CMAwM(mean=x0, sigma=float(sigma0) * float(np.median(scale)), bounds=np.stack([lower, upper], 1),
                         steps=steps, seed=int(seed), population_size=int(popsize) if popsize else None)
        self.popsize = int(self._es.population_size)
        self._lower, self._upper = lower, upper
        self._asked: list[tuple[np.ndarray, np.ndarray]] = []
        self._mean_eval: np.ndarray | None = None

    def ask(self) -> list[np.ndarray]:
        self._asked = [self._es.ask() for _ in range(self.popsize)]
        return [np.clip(np.asarray(x_eval, float), self._lower, self._upper) for x_eval, _ in self._asked]

    def tell(self, xs: list[np.ndarray], fitnesses: list[float]) -> None:
        if len(xs) != len(self._asked):
            raise ValueError(f"told {len(xs)} vectors, asked {len(self._asked)}")
        raw = []
        for x, f in zip(xs, fitnesses):  # the raw vector CMAwM asked for, matched by its encoding
            j = next(k for k, (x_eval, _) in enumerate(self._asked)
                     if np.array_equal(np.clip(x_eval, self._lower, self._upper), x))
            raw.append((self._asked.pop(j)[1], -float(f)))
        self._es.tell(raw)

    @property
    def mean(self) -> np.ndarray:
        return np.clip(np.asarray(self._es.mean, float), self._lower, self._upper)

    # `cmaes` leaves its random generator out of a pickle (a restored strategy draws anew) and
    # stores the covariance as one triangle (a matrix not exactly symmetric comes back changed in
    # the last bit); a resumed run must propose exactly the same vectors, so both travel whole
    def __getstate__(self) -> dict[str, Any]:
        cma = self._es._cma
        return {**self.__dict__, "_rng_state": cma._rng.get_state(), "_covariance": cma._C.copy()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        rng_state, covariance = state.pop("_rng_state"), state.pop("_covariance")
        self.__dict__.update(state)
        self._es._cma._rng.set_state(rng_state)
        self._es._cma._C = covariance

    def dumps(self) -> bytes:
        # our own run-state file only (see CMAESOptimizer.dumps)
        return pickle.dumps(self)


def default_popsize(dim: int) -> int:
    """CMA-ES's default population size, 4 + floor(3 ln n)."""
    return 4 + int(3 * math.log(max(dim, 1)))


OPTIMIZERS = {"cmaes": CMAESOptimizer, "random": RandomSearchOptimizer, "cmaes_margin": MarginCMAESOptimizer}


def make_optimizer(
    name: str,
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    sigma0: float = 0.2,
    popsize: int | None = None,
    seed: int = 0,
    steps: np.ndarray | None = None,
) -> Any:
    """Build an optimizer from the registry by name ("cmaes", "random" or "cmaes_margin";
    `steps` marks discrete coordinates for the last, see `MarginCMAESOptimizer`)."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        from evomm.errors import ConfigError

        raise ConfigError(f"optimizer.name: unknown optimizer {name!r} (known: {sorted(OPTIMIZERS)})")
    if cls is MarginCMAESOptimizer:
        return cls(x0, lower, upper, steps=steps, sigma0=sigma0, popsize=popsize, seed=seed)
    return cls(x0, lower, upper, sigma0=sigma0, popsize=popsize, seed=seed)


def loads(data: bytes) -> Any:
    """Restore an optimizer written by `dumps` (our own checkpoint file; see `dumps`)."""
    return pickle.loads(data)  # noqa: S301 - our own run-state file, never user-supplied data
