"""Kill-and-resume: a run SIGKILLed mid-generation and resumed ends exactly like one left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evomm.cli import main

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, sleep: float) -> Path:
    config = {
        "seed": 3,
        "sources": {"base": "base", "a": "a", "b": "b"},
        "space": {"type": "ps", "method": "task_arithmetic", "base_model": "base", "models": ["a", "b"],
                  "num_layers": 4, "layers_per_group": 2},
        "fitness": {"metric": "search_fitness:quadratic", "options": {"sleep": sleep, "fail": "raise"}},
        "optimizer": {"name": "cmaes", "popsize": 6, "generations": 5, "sigma0": 0.3},
        "output": {"save_model": False},  # no real checkpoints here: the test is about the engine
    }
    config_path = tmp_path / f"config_{sleep}.yml"
    config_path.write_text(yaml.safe_dump(config))
    return config_path


@pytest.fixture(autouse=True)
def _engine_test_fitness(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))


def _evolve(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
    return subprocess.Popen(
        [sys.executable, "-m", "evomm.cli", "evolve", str(config), "--out", str(out), "--no-progress", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _outcome(run_dir: Path) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    return {
        "best_genome": result["best_genome"],
        "best_fitness": result["best_fitness"],
        "history": [(h["generation"], h["best"], h["mean"], h["best_so_far"], h["failed"]) for h in result["history"]],
        "recipe": (run_dir / "best_recipe.yml").read_text(),
    }


def _evaluations(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    return [(r["generation"], r["index"], r["genome"], r["fitness"], r["error"]) for r in rows]


def test_sigkill_mid_generation_then_resume_matches_uninterrupted_run(tmp_path):
    # ~0.05 s per candidate, 6 per generation: the kill lands inside generation 1 or 2, after
    # the first checkpoint (killing before any checkpoint is covered in-process below)
    config_path = _config(tmp_path, sleep=0.05)
    alone = tmp_path / "alone"  # the uninterrupted run, in this process (saves a start-up)
    assert main(["evolve", str(config_path), "--out", str(alone), "--no-progress"]) == 0

    killed = tmp_path / "killed"
    evals = killed / "evaluations.jsonl"
    proc = _evolve(config_path, killed)
    deadline = time.time() + 60
    while _lines(evals) < 9 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint.pkl").exists() and not (killed / "result.json").exists()
    assert 6 < _lines(evals) < 30
    proc = _evolve(config_path, killed, "--resume")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out

    assert _outcome(killed) == _outcome(alone)
    assert _evaluations(killed) == _evaluations(alone)
    assert len(_evaluations(alone)) == 5 * 6


class _Crash(BaseException):
    """Stands in for SIGKILL in-process: not an Exception, so no failure handler catches it."""


def test_a_crash_after_any_evaluation_resumes_to_the_same_run(tmp_path):
    """Crash after every possible number of evaluations (in gen 0 before any checkpoint,
    mid-generation, right after a generation's last candidate, ...), resume, and compare."""
    from evomm.search.backends import InProcessBackend
    from evomm.search.optimizer import CMAESOptimizer
    from evomm.search.ps_space import PSSpace
    from evomm.search.run import SearchRun
    from search_fitness import QuadraticEvaluator

    space = PSSpace("task_arithmetic", ["a", "b"], num_layers=4, base_model="base", layers_per_group=2)

    class Crashing(QuadraticEvaluator):
        def __init__(self, crash_at):
            super().__init__({"fail": "raise"})
            self.crash_at, self.calls = crash_at, 0

        def evaluate(self, spec):
            self.calls += 1
            if self.calls == self.crash_at:
                raise _Crash()
            return super().evaluate(spec)

    def search(run_dir, crash_at=None, resume=False):
        return SearchRun(
            space,
            lambda: CMAESOptimizer(space.initial(), space.lower, space.upper, sigma0=0.3, popsize=5, seed=7),
            InProcessBackend(lambda: Crashing(crash_at)),
            run_dir, generations=4, progress=False,
        ).run(resume=resume)

    reference = search(tmp_path / "alone")
    total = 4 * 5
    for crash_at in range(1, total + 1):
        run_dir = tmp_path / f"crash{crash_at}"
        with pytest.raises(_Crash):
            search(run_dir, crash_at=crash_at)
        resumed = search(run_dir, resume=True)
        assert resumed.best_genome.tolist() == reference.best_genome.tolist(), crash_at
        assert resumed.best_fitness == reference.best_fitness
        assert resumed.history == reference.history
        assert _evaluations(run_dir) == _evaluations(tmp_path / "alone")


def test_resume_refuses_a_different_config(tmp_path, capsys):
    config = _config(tmp_path, sleep=0.0)
    run_dir = tmp_path / "run"
    assert main(["evolve", str(config), "--out", str(run_dir), "--no-progress"]) == 0
    raw = yaml.safe_load(config.read_text())
    raw["optimizer"]["sigma0"] = 0.1
    config.write_text(yaml.safe_dump(raw))
    (run_dir / "result.json").unlink()  # pretend the run is unfinished
    assert main(["evolve", str(config), "--out", str(run_dir), "--no-progress", "--resume"]) == 2
    assert "different settings" in capsys.readouterr().err


def test_new_run_refuses_a_used_directory(tmp_path, capsys):
    config = _config(tmp_path, sleep=0.0)
    run_dir = tmp_path / "run"
    assert main(["evolve", str(config), "--out", str(run_dir), "--no-progress"]) == 0
    assert main(["evolve", str(config), "--out", str(run_dir), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    config = _config(tmp_path, sleep=0.0)
    raw = yaml.safe_load(config.read_text())
    raw["after_run"] = ["search_fitness:write_marker"]
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    assert main(["evolve", str(config), "--out", str(run_dir), "--no-progress"]) == 0
    before = (_outcome(run_dir), _evaluations(run_dir))
    assert json.loads((run_dir / "after_run.json").read_text()) == {"stages": ["search"], "seed": 3}
    assert main(["evolve", str(config), "--out", str(run_dir), "--no-progress", "--resume"]) == 0
    assert (_outcome(run_dir), _evaluations(run_dir)) == before
