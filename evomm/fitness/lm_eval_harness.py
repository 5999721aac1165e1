"""Fitness `lm_eval`: a weighted sum of lm-evaluation-harness task metrics, on the candidate in memory.

mergekit-evolve users write their objective as lm-eval tasks; this fitness reads the same list
(`tasks: [{name, weight, metric}]`, a bare task name meaning weight 1 and `acc,none`). The tasks
are loaded once per evaluator; each candidate (PS weights written in place, or a re-routed DFS
model) is wrapped in lm-eval's `HFLM` without being written to disk, and the harness runs the
already-built tasks on it. Greedy generation and a fixed document subset make the score a
function of the genome, which resume relies on.

    fitness:
      metric: lm_eval
      n_samples: 60                  # seeded subsample of each task's documents (or options.limit)
      tasks:
        - {name: toy_math_ja_fitness, weight: 1.0, metric: "acc_ja,none"}
      options:
        include_path: ../assets/math_zoo/lm_eval   # local task folders (relative: to the config)
        batch_size: 60
        apply_chat_template: false
        tokenizer: ja                # source whose tokenizer the candidate uses
        dtype: float32

`LMEvalHarness` is the part without a search: `evomm eval --lm-eval` runs it on checkpoints.
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomm.errors import ConfigError, MetricError
from evomm.fitness.common import LazyCandidate, config_relative, seeded_indices, tokenizer_path
from evomm.fitness.registry import FitnessContext, register_fitness


class LMEvalTask(BaseModel):
    """One objective term, as mergekit-evolve writes it: a task, its weight, `metric,filter`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    weight: float = 1.0
    metric: str = "acc,none"

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class LMEvalSettings(BaseModel):
    """How the harness runs: which tasks, how many documents, how they are prompted."""

    model_config = ConfigDict(extra="forbid")
    tasks: list[LMEvalTask] = Field(min_length=1)
    include_path: list[str] = Field(default_factory=list, description="local task folders")
    include_defaults: bool = Field(True, description="also index lm-eval's own tasks (slower start)")
    limit: int | float | None = Field(None, description="first N documents (or a fraction) per task")
    n_samples: int | None = Field(None, ge=1, description="seeded subsample of N documents per task")
    sample_seed: int = 0
    batch_size: int = Field(8, ge=1)
    num_fewshot: int | None = Field(None, ge=0)
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None
    gen_kwargs: dict[str, Any] | None = None
    max_length: int | None = Field(None, ge=1, description="context + generation tokens (default: the model's)")

    @model_validator(mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("include_path"), str):
            value = {**value, "include_path": [value["include_path"]]}
        return value

    @model_validator(mode="after")
    def _one_subset(self) -> "LMEvalSettings":
        if self.limit is not None and self.n_samples is not None:
            raise ValueError("give limit (the first documents) or n_samples (a seeded subsample), not both")
        return self


def _quiet_harness() -> None:
    """lm-eval logs every task load and request build; a search runs it thousands of times."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


@contextmanager
def _no_request_bars(quiet: bool):
    """lm-eval draws a bar while it builds each task's requests, with no switch to turn it off;
    under a search (one run per candidate) it would bury evomm's own progress bar."""
    import lm_eval.api.task as task_module

    original = task_module.tqdm
    if quiet:
        task_module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        task_module.tqdm = original


def _quiet_hflm(HFLM):
    """HFLM whose request loops draw no bars (they take `disable_tqdm`, evaluate() never sets it)."""

    class QuietHFLM(HFLM):
        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

    return QuietHFLM


class LMEvalHarness:
    """lm-eval tasks loaded once, run on any causal LM object: `run(model)`, `score(results)`."""

    def __init__(self, settings: LMEvalSettings, tokenizer=None, *, quiet: bool = True) -> None:
        try:
            from lm_eval.defaults import DEFAULT_OTHER_SEED  # noqa: F401  (checks the install)
            from lm_eval.tasks import TaskManager
        except ImportError:
            raise ConfigError("the lm_eval fitness needs lm-evaluation-harness: pip install 'evomm[lmeval]'") from None
        _quiet_harness()
        self.settings, self.tokenizer, self.quiet = settings, tokenizer, quiet
        for folder in settings.include_path:
            if not Path(folder).is_dir():
                raise ConfigError(f"include_path: {folder} is not a folder of lm-eval task YAMLs")
        manager = TaskManager(include_path=settings.include_path or None,
                              include_defaults=settings.include_defaults or not settings.include_path)
        names = [t.name for t in settings.tasks]
        unknown = [n for n in names if n not in manager.all_tasks]
        if unknown:
            where = f" (searched {', '.join(settings.include_path)} and lm-eval's own tasks)" \
                if settings.include_path else " (give local task folders with include_path)"
            raise ConfigError(f"lm_eval: unknown task(s) {unknown}{where}")
        self.loaded = manager.load(names)
        self._prepare_tasks()
        self._lm = None

    def _prepare_tasks(self) -> None:
        """What `simple_evaluate` does to tasks before running them, done once."""
        from lm_eval.defaults import DEFAULT_OTHER_SEED

        s = self.settings
        for task in self.loaded["tasks"].values():
            if s.num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=s.num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            if s.gen_kwargs and task.get_config("output_type") == "generate_until":
                task.set_config(key="generation_kwargs", value=dict(s.gen_kwargs), update=True)
            task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)  # what simple_evaluate uses
        self.samples = None
        if s.n_samples is not None:
            self.samples = {name: seeded_indices(len(task.eval_docs), s.n_samples, s.sample_seed)
                            for name, task in self.loaded["tasks"].items()}
        for term in s.tasks:
            task = self.loaded["tasks"].get(term.name)
            if task is None:  # a group: its members' metrics are aggregated by lm-eval
                continue
            metric = term.metric.split(",")[0]
            known = sorted(task.aggregation())
            if metric not in known:
                raise ConfigError(f"lm_eval: task {term.name} has no metric {metric!r} (it reports {known})")

    def _wrap(self, model: torch.nn.Module, tokenizer):
        from lm_eval.models.huggingface import HFLM

        if self._lm is None or self._lm.model is not model or self._lm.tokenizer is not tokenizer:
            wrapper = _quiet_hflm(HFLM) if self.quiet else HFLM
            self._lm = wrapper(pretrained=model, tokenizer=tokenizer, backend="causal",
                            batch_size=self.settings.batch_size, max_length=self.settings.max_length)
        return self._lm

    def run(self, model: torch.nn.Module, tokenizer=None) -> dict[str, dict[str, Any]]:
        """{task or group: {"metric,filter": value}} for `model` as it is now (read with
        `tokenizer`, default the harness's: one harness serves models with their own)."""
        from lm_eval.evaluator import evaluate

        s = self.settings
        with torch.inference_mode(), _no_request_bars(self.quiet):
            out = evaluate(self._wrap(model, tokenizer or self.tokenizer), task_dict=self.loaded, limit=s.limit, samples=self.samples,
                           bootstrap_iters=0, log_samples=False, system_instruction=s.system_instruction,
                           apply_chat_template=s.apply_chat_template, fewshot_as_multiturn=s.fewshot_as_multiturn)
        return dict(out["results"]) if out else {}

    def score(self, results: dict[str, dict[str, Any]]) -> float:
        """Σ weight × metric, mergekit-evolve's objective."""
        total = 0.0
        for term in self.settings.tasks:
            values = results.get(term.name, {})
            if term.metric not in values:
                reported = sorted(k for k in values if not k.endswith("_stderr,none") and k != "alias")
                raise MetricError(f"lm_eval: task {term.name} reported no {term.metric!r} (it reported {reported})")
            total += term.weight * float(values[term.metric])
        return total


def settings_from_context(ctx: FitnessContext) -> LMEvalSettings:
    """The fitness config as harness settings; `include_path` entries relative to the config."""
    opts = dict(ctx.options)
    for key in ("tokenizer", "dtype", "merge_device", "compile"):
        opts.pop(key, None)
    if ctx.n_samples is not None:
        opts.setdefault("n_samples", ctx.n_samples)
    opts.setdefault("sample_seed", int(ctx.seed))
    if "batch_size" in ctx.generation:
        opts.setdefault("batch_size", ctx.generation["batch_size"])
    paths = opts.get("include_path") or []
    opts["include_path"] = [str(config_relative(p, ctx)) for p in ([paths] if isinstance(paths, str) else paths)]
    try:
        return LMEvalSettings.model_validate(opts)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"fitness (lm_eval): {loc + ': ' if loc else ''}{err['msg'].removeprefix('Value error, ')}") from None


class LMEvalEvaluator:
    """One candidate model in memory, scored by the harness."""

    def __init__(self, harness: LMEvalHarness, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 options: dict[str, Any] | None = None) -> None:
        self.harness, self.device, self.dtype = harness, device, dtype
        self.options = dict(options or {})
        self._candidate = LazyCandidate(device, dtype, self.options)
        self.last_results: dict[str, dict[str, Any]] = {}

    def evaluate(self, spec: dict[str, Any]) -> float:
        self.last_results = self.harness.run(self._candidate.apply(spec))
        return self.harness.score(self.last_results)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@register_fitness("lm_eval")
def lm_eval_fitness(ctx: FitnessContext) -> LMEvalEvaluator:
    settings = settings_from_context(ctx)
    harness = LMEvalHarness(settings, load_tokenizer(tokenizer_path(ctx)))
    dtype = getattr(torch, str(ctx.options.get("dtype", "float32")))
    return LMEvalEvaluator(harness, device=ctx.device, dtype=dtype, options=dict(ctx.options))
