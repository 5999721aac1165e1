"""Optimizers: proposals stay in the box, and a restored optimizer continues exactly."""

from __future__ import annotations

import numpy as np
import pytest

from evomm.errors import ConfigError
from evomm.search.optimizer import CMAESOptimizer, RandomSearchOptimizer, loads, make_optimizer

LOWER, UPPER = np.zeros(5), np.array([1.0, 1.0, 2.0, 2.0, 0.5])


def _fitness(x: np.ndarray) -> float:
    return -float(np.sum((x - 0.3) ** 2))


@pytest.mark.parametrize("cls", [CMAESOptimizer, RandomSearchOptimizer])
def test_restored_optimizer_proposes_the_same_vectors(cls):
    opt = cls(np.full(5, 0.9), LOWER, UPPER, sigma0=0.5, popsize=7, seed=11)
    for _ in range(3):
        xs = opt.ask()
        assert len(xs) == 7
        assert all(np.all(x >= LOWER) and np.all(x <= UPPER) for x in xs)
        opt.tell(xs, [_fitness(x) for x in xs])
    saved = opt.dumps()
    np.random.seed(0)
    np.random.rand(100)  # global numpy state must not matter
    expected = opt.ask()
    restored = loads(saved)
    assert all(np.array_equal(a, b) for a, b in zip(restored.ask(), expected))


def test_same_seed_same_run_other_seed_other_run():
    def first(seed):
        return CMAESOptimizer(np.full(5, 0.5), LOWER, UPPER, seed=seed).ask()[0]

    assert np.array_equal(first(1), first(1))
    assert not np.array_equal(first(1), first(2))


def test_cmaes_improves_on_a_quadratic():
    opt = make_optimizer("cmaes", np.full(5, 0.9), LOWER, UPPER, sigma0=0.3, popsize=8, seed=0)
    for _ in range(40):
        xs = opt.ask()
        opt.tell(xs, [_fitness(x) for x in xs])
    assert np.allclose(opt.mean, 0.3, atol=0.02)


def test_unknown_optimizer():
    with pytest.raises(ConfigError, match="unknown optimizer 'adam'"):
        make_optimizer("adam", np.zeros(2), np.zeros(2), np.ones(2))


def _dfs_problem():
    """A DFS genome (2 sources x 4 layers, 2 repeats, per-source-pair scales) and a target path."""
    from evomm.search.dfs_space import DFSSpace

    space = DFSSpace([4, 4], repeats=2, max_length=8, scaling="source_pair")
    target = {0, 1, 5, 6, 10, 11, 15}  # slots on the wanted path

    def fitness(x):
        chosen = set(space.select_slots(x[: space.num_slots]))
        scales = x[space.num_slots:]
        return -len(chosen ^ target) - float(np.sum((scales - 0.3) ** 2))

    return space, fitness


def test_margin_cmaes_keeps_dfs_inclusions_binary_and_resumes_exactly():
    space, fitness = _dfs_problem()
    opt = make_optimizer("cmaes_margin", space.initial(), space.lower, space.upper, popsize=8, seed=3,
                         steps=space.discrete_steps)
    for _ in range(3):
        xs = opt.ask()
        assert all(set(np.round(x[: space.num_slots], 6)) <= {-1.0, 1.0} for x in xs)  # in or out, nothing else
        assert all(np.all(x >= space.lower) and np.all(x <= space.upper) for x in xs)
        opt.tell(xs, [fitness(x) for x in xs])
    twin = loads(opt.dumps())
    assert all(np.array_equal(a, b) for a, b in zip(opt.ask(), twin.ask()))
    with pytest.raises(ConfigError, match="no discrete coordinates"):
        make_optimizer("cmaes_margin", np.zeros(3), -np.ones(3), np.ones(3))


def test_margin_cmaes_finds_a_dfs_path():
    space, fitness = _dfs_problem()
    best = []
    for name in ("cmaes_margin", "cmaes"):
        opt = make_optimizer(name, space.initial(), space.lower, space.upper, popsize=12, seed=0,
                             steps=space.discrete_steps)
        top = -np.inf
        for _ in range(40):
            xs = opt.ask()
            fs = [fitness(x) for x in xs]
            opt.tell(xs, fs)
            top = max(top, max(fs))
        best.append(top)
    assert best[0] > -1.0  # the wanted path found, scales near their target
    assert best[0] >= best[1] - 1e-9  # on this problem, same budget: at least as good as plain CMA-ES
