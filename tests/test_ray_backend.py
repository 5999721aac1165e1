"""The Ray backend gives the same search as the in-process one for the same seed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("ray")

from evomm.search.config import parse_config  # noqa: E402
from evomm.search.stages import run_all  # noqa: E402

TESTS = Path(__file__).resolve().parent


def _config(backend: dict) -> dict:
    return {
        "seed": 5,
        "sources": {"base": "base", "a": "a", "b": "b"},
        "space": {"type": "ps", "method": "task_arithmetic", "base_model": "base", "models": ["a", "b"],
                  "num_layers": 4},
        "fitness": {"metric": "search_fitness:quadratic", "options": {"fail": "raise"}},
        "optimizer": {"name": "cmaes", "popsize": 6, "generations": 3},
        "backend": backend,
        "output": {"save_model": False, "plots": False},
    }


def _records(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    return [(r["generation"], r["index"], r["genome"], r["fitness"], r["error"]) for r in rows]


@pytest.mark.slow  # starting Ray and its worker process costs 10-25 s on the 2-core test machines
def test_ray_backend_matches_in_process(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    # Ray's worker processes inherit the environment: let them import evomm and the test fitness
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    local = run_all(parse_config(_config({"type": "inprocess"})), tmp_path / "local", progress=False, log=lambda _: None)
    # one CPU, one actor: what this small machine can spare, and still a real Ray actor process
    ray_cfg = {"type": "ray", "num_workers": 1, "num_cpus": 1}
    remote = run_all(parse_config(_config(ray_cfg)), tmp_path / "ray", progress=False, log=lambda _: None)

    assert remote["search"]["best_genome"] == local["search"]["best_genome"]
    assert remote["search"]["best_fitness"] == local["search"]["best_fitness"]
    assert remote["search"]["history"] == local["search"]["history"]
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")
    assert any(r[4] for r in _records(tmp_path / "ray")), "a failing candidate should cross the Ray boundary too"
