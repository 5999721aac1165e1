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
