"""Failing candidates: logged with their error, given the worst fitness, and the run goes on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evomm.errors import SearchError
from evomm.search.backends import InProcessBackend, safe_evaluate
from evomm.search.optimizer import CMAESOptimizer
from evomm.search.ps_space import PSSpace
from evomm.search.run import SearchRun, _penalised
from search_fitness import QuadraticEvaluator  # tests/ is on sys.path under pytest


def _space() -> PSSpace:
    return PSSpace("task_arithmetic", ["a", "b"], num_layers=4, base_model="base", layers_per_group=2)


def _run(tmp_path, fail: str, generations: int = 4) -> SearchRun:
    space = _space()
    run = SearchRun(
        space,
        lambda: CMAESOptimizer(space.initial(), space.lower, space.upper, sigma0=0.3, popsize=8, seed=0),
        InProcessBackend(lambda: QuadraticEvaluator({"fail": fail})),
        tmp_path / fail,
        generations=generations,
        progress=False,
    )
    return run


@pytest.mark.parametrize("fail, message", [
    ("raise", "RuntimeError: injected failure"),
    ("nan", "fitness is nan"),
    ("oom", "out of memory"),
])
def test_failed_candidates_are_logged_and_the_run_goes_on(tmp_path, fail, message):
    result = _run(tmp_path, fail).run()
    records = [json.loads(line) for line in (tmp_path / fail / "evaluations.jsonl").read_text().splitlines()]
    assert len(records) == 4 * 8
    failed = [r for r in records if r["error"] is not None]
    assert failed, "the injected failure never triggered"
    assert all(r["fitness"] is None and message in r["error"] for r in failed)
    assert all(r["fitness"] is not None and math.isfinite(r["fitness"]) for r in records if r["error"] is None)
    assert sum(h.failed for h in result.history) == len(failed)
    # the best candidate is a successful one, and never one that failed
    assert result.best_genome[0] <= 0.5
    assert result.best_fitness == max(r["fitness"] for r in records if r["fitness"] is not None)


def test_a_generation_where_every_candidate_fails_stops_with_a_clear_error(tmp_path):
    with pytest.raises(SearchError, match="every candidate of generation 0 failed; first error: ValueError: every candidate fails"):
        _run(tmp_path, "all").run()
    # what was evaluated is still on record
    records = (tmp_path / "all" / "evaluations.jsonl").read_text().splitlines()
    assert len(records) == 8


def test_failures_rank_below_every_success():
    ranked = _penalised([-1.0, None, -3.0, None])
    assert ranked[1] == ranked[3] < -3.0
    assert ranked[0] == -1.0 and ranked[2] == -3.0


def test_safe_evaluate_reports_the_error_and_time():
    class Broken:
        def evaluate(self, spec):
            raise KeyError("model.layers.9.mlp.up_proj.weight")

    result = safe_evaluate(Broken(), {})
    assert result.fitness is None and result.seconds >= 0
    assert result.error.startswith("KeyError: 'model.layers.9.mlp.up_proj.weight'")


def test_infinite_fitness_counts_as_failure():
    class Inf:
        def evaluate(self, spec):
            return -np.inf

    assert safe_evaluate(Inf(), {}).error == "fitness is -inf"
