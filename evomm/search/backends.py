"""Where candidates are evaluated: in this process (default) or on Ray actors.

A backend receives a list of candidate specs and yields one `EvalResult` per spec, in order,
as soon as each is known (so the run loop can log it before the next one finishes). It never
raises for a failing candidate: an exception, a NaN/inf fitness or an out-of-memory error
becomes an `EvalResult` with `fitness=None` and the error text, and the search goes on.

Evaluators are built from an `EvaluatorFactory`: a picklable zero-argument callable (e.g. a
`functools.partial` of a module-level function and a config dict). The in-process backend
calls it once; each Ray actor calls it once in its own process and keeps its own source
weights for its lifetime.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from evomm.search.space import Evaluator

EvaluatorFactory = Callable[[], Evaluator]


@dataclass
class EvalResult:
    """The outcome of one candidate: a finite fitness, or None and the error."""

    fitness: float | None
    seconds: float
    error: str | None = None


def safe_evaluate(evaluator: Evaluator, spec: dict[str, Any]) -> EvalResult:
    """Evaluate one spec, turning every failure into a logged result instead of an exception."""
    start = time.perf_counter()
    try:
        value = float(evaluator.evaluate(spec))
    except MemoryError as exc:
        _free_accelerator_memory()
        return EvalResult(None, time.perf_counter() - start, f"out of memory: {exc}")
    except Exception as exc:  # noqa: BLE001 - any candidate failure is recorded, not fatal
        if _is_out_of_memory(exc):
            _free_accelerator_memory()
            return EvalResult(None, time.perf_counter() - start, f"out of memory: {_one_line(exc)}")
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
        return EvalResult(None, time.perf_counter() - start, f"{type(exc).__name__}: {_one_line(exc)}{where}")
    seconds = time.perf_counter() - start
    if not math.isfinite(value):
        return EvalResult(None, seconds, f"fitness is {value}")
    return EvalResult(value, seconds)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def _is_out_of_memory(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return "out of memory" in str(exc).lower()


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


class InProcessBackend:
    """Evaluate candidates one after another with a single evaluator in this process."""

    def __init__(self, factory: EvaluatorFactory) -> None:
        self._factory = factory
        self._evaluator: Evaluator | None = None

    @property
    def num_workers(self) -> int:
        return 1

    def evaluate(self, specs: list[dict[str, Any]]) -> Iterator[EvalResult]:
        if self._evaluator is None:  # built lazily: a resumed run with nothing left builds nothing
            self._evaluator = self._factory()
        for spec in specs:
            yield safe_evaluate(self._evaluator, spec)

    def close(self) -> None:
        self._evaluator = None


class _EvaluatorActor:
    """Body of a Ray actor: one evaluator (with its own source weights) per actor."""

    def __init__(self, factory: EvaluatorFactory, num_threads: int) -> None:
        import torch

        torch.set_num_threads(num_threads)
        self._evaluator = factory()

    def evaluate(self, spec: dict[str, Any]) -> EvalResult:
        return safe_evaluate(self._evaluator, spec)


class RayBackend:
    """Evaluate candidates in parallel on Ray actors: one per GPU, or one per CPU slot.

    Results come back in the order of the specs, so a run gives the same fitness history
    whatever the number of actors (evaluation itself must be deterministic, as ours is).
    `address=None` starts a local Ray instance with `num_cpus` CPUs; tests use one CPU.
    """

    def __init__(
        self,
        factory: EvaluatorFactory,
        *,
        num_workers: int = 1,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
        num_threads: int = 1,
        address: str | None = None,
        num_cpus: int | None = None,
    ) -> None:
        import ray

        if not ray.is_initialized():
            init_kwargs: dict[str, Any] = dict(
                address=address, include_dashboard=False, log_to_driver=True, configure_logging=False
            )
            if address is None:
                init_kwargs["num_cpus"] = num_cpus if num_cpus is not None else max(1, int(num_workers * cpus_per_worker))
            ray.init(**init_kwargs)
            self._owns_ray = True
        else:
            self._owns_ray = False
        actor_cls = ray.remote(_EvaluatorActor).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
        self._actors = [actor_cls.remote(factory, num_threads) for _ in range(num_workers)]
        self._ray = ray

    @property
    def num_workers(self) -> int:
        return len(self._actors)

    def evaluate(self, specs: list[dict[str, Any]]) -> Iterator[EvalResult]:
        ray = self._ray
        pending: dict[Any, int] = {}  # object ref -> spec index
        results: dict[int, EvalResult] = {}
        next_spec, next_yield = 0, 0
        idle = list(self._actors)
        busy: dict[Any, Any] = {}  # object ref -> actor
        while next_yield < len(specs):
            while idle and next_spec < len(specs):
                actor = idle.pop(0)
                ref = actor.evaluate.remote(specs[next_spec])
                pending[ref], busy[ref] = next_spec, actor
                next_spec += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                try:
                    results[pending.pop(ref)] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a dead actor fails this candidate only
                    results[pending.pop(ref, -1)] = EvalResult(None, 0.0, f"ray worker failed: {_one_line(exc)}")
                idle.append(busy.pop(ref))
            while next_yield in results:
                yield results.pop(next_yield)
                next_yield += 1

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._owns_ray:
            self._ray.shutdown()


def make_backend(kind: str, factory: EvaluatorFactory, **options: Any):
    """Build a backend by name: "inprocess" (default) or "ray"."""
    if kind == "inprocess":
        return InProcessBackend(factory)
    if kind == "ray":
        return RayBackend(factory, **options)
    from evomm.errors import ConfigError

    raise ConfigError(f"backend.type: unknown backend {kind!r} (known: inprocess, ray)")
