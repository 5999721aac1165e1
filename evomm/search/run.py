"""The generation loop with its run state: evaluate, log, checkpoint, resume.

Files in a stage's run directory:
  evaluations.jsonl  one JSON line per evaluated candidate (generation, index, genome, fitness,
                     seconds, error), appended and flushed as each finishes
  checkpoint.pkl     everything needed to continue after the last completed generation:
                     the optimizer (with its private random generator), numpy / python / torch
                     global random states, the fitness history and the best candidate so far;
                     replaced atomically (temp file + fsync + rename) once per generation
  history.json       the same history in readable form (informational; resume never reads it)

Why a killed run resumes exactly: the checkpoint is written only after a generation is
told to the optimizer, and the optimizer samples only from the random state stored in it.
On resume, records of a generation that had not completed are not trusted as a fitness
history: they are kept only as a cache keyed by (generation, index, genome), so a candidate
that already finished before the kill is not evaluated again, and the fitness it got is the
same deterministic value it would get now.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from evomm.errors import ResumeError, SearchError
from evomm.search import optimizer as optimizer_mod
from evomm.search.backends import EvalResult
from evomm.search.space import SearchSpace

CHECKPOINT = "checkpoint.pkl"
EVALUATIONS = "evaluations.jsonl"
HISTORY = "history.json"


@dataclass
class GenerationSummary:
    generation: int
    best: float | None  # best fitness of this generation (None if all failed)
    mean: float | None  # mean over the candidates that did not fail
    best_so_far: float
    failed: int
    evaluations: int  # total evaluations after this generation


@dataclass
class RunState:
    """What checkpoint.pkl holds (plus the optimizer bytes and random states)."""

    fingerprint: str
    generation: int = 0  # completed generations
    evaluations: int = 0
    history: list[GenerationSummary] = field(default_factory=list)
    best_genome: list[float] | None = None
    best_fitness: float = -math.inf
    best_generation: int = -1
    optimizer: bytes = b""
    random_states: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    best_genome: np.ndarray
    best_fitness: float
    best_spec: dict[str, Any]
    history: list[GenerationSummary]
    evaluations: int
    run_dir: Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fingerprint(obj: Any) -> str:
    """A stable hash of the settings a run depends on (refuses resuming a different run)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _capture_random_states() -> dict[str, Any]:
    states: dict[str, Any] = {"numpy": np.random.get_state(), "python": random.getstate()}
    try:
        import torch

        states["torch"] = torch.get_rng_state()
    except ImportError:
        pass
    return states


def _restore_random_states(states: dict[str, Any]) -> None:
    if "numpy" in states:
        np.random.set_state(states["numpy"])
    if "python" in states:
        random.setstate(states["python"])
    if "torch" in states:
        import torch

        torch.set_rng_state(states["torch"])


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of evaluations.jsonl (a line cut by a kill is dropped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _penalised(fitnesses: list[float | None]) -> list[float]:
    """Failed candidates get a fitness below every successful one of their generation."""
    finite = [f for f in fitnesses if f is not None]
    lo, hi = min(finite), max(finite)
    worst = lo - (hi - lo) - 1.0
    return [worst if f is None else f for f in fitnesses]


class SearchRun:
    """Drive one optimizer over one search space with one backend, checkpointing in `run_dir`.

    `optimizer_factory()` must build the optimizer deterministically (same settings, same seed);
    it is called only for a fresh run. `generations` bounds the run; `max_evaluations`, when set,
    bounds it to ceil(max_evaluations / popsize) generations as well.
    """

    def __init__(
        self,
        space: SearchSpace,
        optimizer_factory: Callable[[], Any],
        backend: Any,
        run_dir: str | Path,
        *,
        generations: int | None = None,
        max_evaluations: int | None = None,
        settings: Any = None,
        progress: bool = True,
        on_generation: Callable[[GenerationSummary], None] | None = None,
    ) -> None:
        if generations is None and max_evaluations is None:
            raise SearchError("set generations or max_evaluations to bound the search")
        self.space = space
        self.optimizer_factory = optimizer_factory
        self.backend = backend
        self.run_dir = Path(run_dir)
        self.generations = generations
        self.max_evaluations = max_evaluations
        self.fingerprint = fingerprint({"settings": settings, "dim": space.dim})
        self.progress = progress
        self.on_generation = on_generation

    # -- state -------------------------------------------------------------------------------

    def _total_generations(self, popsize: int) -> int:
        limits = []
        if self.generations is not None:
            limits.append(int(self.generations))
        if self.max_evaluations is not None:
            limits.append(math.ceil(int(self.max_evaluations) / popsize))
        return min(limits)

    def _load(self, resume: bool) -> tuple[RunState, Any, dict[tuple[int, int], dict[str, Any]]]:
        ckpt = self.run_dir / CHECKPOINT
        evals = self.run_dir / EVALUATIONS
        if not resume:
            if ckpt.exists() or evals.exists():
                raise ResumeError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose a new --out")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            state = RunState(fingerprint=self.fingerprint)
            optimizer = self.optimizer_factory()
            return state, optimizer, {}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.run_dir.glob(".*.tmp"):  # temp files of writes a kill interrupted
            stale.unlink(missing_ok=True)
        if ckpt.exists():
            # our own file, written by `_checkpoint` below (see optimizer.dumps for why pickle)
            with open(ckpt, "rb") as fh:
                state: RunState = pickle.load(fh)  # noqa: S301
            if state.fingerprint != self.fingerprint:
                raise ResumeError(
                    f"{ckpt}: the run was started with different settings; resume it with the same config"
                )
            optimizer = optimizer_mod.loads(state.optimizer)
            _restore_random_states(state.random_states)
        else:  # killed during the first generation: start over, keeping finished candidates
            state = RunState(fingerprint=self.fingerprint)
            optimizer = self.optimizer_factory()
        records = _read_records(evals)
        kept = [r for r in records if r.get("generation", math.inf) < state.generation]
        cache = {(r["generation"], r["index"]): r for r in records if r.get("generation") == state.generation}
        # rewrite the log to what the checkpoint vouches for; the partial generation is re-logged
        atomic_write_text(evals, "".join(json.dumps(r) + "\n" for r in kept))
        return state, optimizer, cache

    def _checkpoint(self, state: RunState, optimizer: Any) -> None:
        state.optimizer = optimizer.dumps()
        state.random_states = _capture_random_states()
        atomic_write_bytes(self.run_dir / CHECKPOINT, pickle.dumps(state))
        atomic_write_text(
            self.run_dir / HISTORY,
            json.dumps(
                {
                    "generations": [asdict(h) for h in state.history],
                    "best_fitness": state.best_fitness,
                    "best_generation": state.best_generation,
                    "best_genome": state.best_genome,
                    "labels": self.space.labels(),
                },
                indent=1,
            ),
        )

    # -- loop --------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> SearchResult:
        state, optimizer, cache = self._load(resume)
        total = self._total_generations(optimizer.popsize)
        bar = _progress_bar(total * optimizer.popsize, state.evaluations, self.progress)
        try:
            with open(self.run_dir / EVALUATIONS, "a", encoding="utf-8") as log:
                while state.generation < total:
                    self._generation(state, optimizer, cache, log, bar)
                    cache = {}
                    self._checkpoint(state, optimizer)
                    summary = state.history[-1]
                    if bar is not None:
                        bar.set_postfix(
                            gen=f"{summary.generation + 1}/{total}",
                            best=_fmt(summary.best_so_far),
                            mean=_fmt(summary.mean),
                        )
                    if self.on_generation is not None:
                        self.on_generation(summary)
        finally:
            if bar is not None:
                bar.close()
        if state.best_genome is None:
            raise SearchError("the search finished without a successful candidate")
        best = np.asarray(state.best_genome, float)
        return SearchResult(best, state.best_fitness, self.space.decode(best), state.history, state.evaluations, self.run_dir)

    def _generation(self, state: RunState, optimizer: Any, cache: dict, log, bar) -> None:
        gen = state.generation
        xs = optimizer.ask()
        specs = [self.space.decode(x) for x in xs]
        results: list[EvalResult | None] = [None] * len(xs)
        for i, x in enumerate(xs):
            hit = cache.get((gen, i))
            if hit is not None and hit.get("genome") == [float(v) for v in x]:
                results[i] = EvalResult(hit["fitness"], hit["seconds"], hit["error"])
        todo = [i for i, r in enumerate(results) if r is None]
        cached = [i for i in range(len(xs)) if i not in todo]
        for i in cached:  # re-log cached results first, in index order
            self._log(log, gen, i, xs[i], results[i])
            if bar is not None:
                bar.update(1)
        for i, result in zip(todo, self.backend.evaluate([specs[i] for i in todo])):
            results[i] = result
            self._log(log, gen, i, xs[i], result)
            if bar is not None:
                bar.update(1)
        fitnesses = [r.fitness for r in results]
        ok = [f for f in fitnesses if f is not None]
        if not ok:
            errors = sorted({r.error for r in results if r.error})
            raise SearchError(f"every candidate of generation {gen} failed; first error: {errors[0] if errors else '?'}")
        optimizer.tell(xs, _penalised(fitnesses))
        best_i = max((i for i, f in enumerate(fitnesses) if f is not None), key=lambda i: fitnesses[i])
        if fitnesses[best_i] > state.best_fitness:
            state.best_fitness = float(fitnesses[best_i])
            state.best_genome = [float(v) for v in xs[best_i]]
            state.best_generation = gen
        state.evaluations += len(xs)
        state.history.append(
            GenerationSummary(
                generation=gen,
                best=max(ok),
                mean=float(np.mean(ok)),
                best_so_far=state.best_fitness,
                failed=len(fitnesses) - len(ok),
                evaluations=state.evaluations,
            )
        )
        state.generation += 1

    @staticmethod
    def _log(log, gen: int, index: int, x: np.ndarray, result: EvalResult) -> None:
        record = {
            "generation": gen,
            "index": index,
            "genome": [float(v) for v in x],
            "fitness": result.fitness,
            "seconds": result.seconds,
            "error": result.error,
        }
        log.write(json.dumps(record) + "\n")
        log.flush()
        os.fsync(log.fileno())


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _progress_bar(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=min(done, total), unit="cand", desc="evolve", dynamic_ncols=True)
