"""The fitness of EvoLLM-JP: accuracy on Japanese math word problems (`math_accuracy_ja`).

One `CandidateModel` (PS weights written in place, or a re-routed DFS model) answers a fixed,
seeded subset of problems greedily with Sakana's `ja-alpaca-cot` prompt; the last number of
each answer is compared with the reference (`evomm.metrics.math`). `objective: acc` counts
every correct answer, `acc_ja` (Sakana's strict variant) only those written in Japanese.

    fitness:
      metric: math_accuracy_ja
      dataset: data/mgsm            # mgsm_ja.tsv, or JSONL rows with question, answer_number
      n_samples: 50
      generation: {max_new_tokens: 256, batch_size: 16}
      options: {objective: acc_ja, template: ja-alpaca-cot, tokenizer: shisa, dtype: bfloat16}
"""

from __future__ import annotations

from typing import Any

import torch

from evomm.errors import ConfigError
from evomm.fitness.common import LazyCandidate, config_relative, seeded_indices, tokenizer_path
from evomm.fitness.registry import FitnessContext, register_fitness

OBJECTIVES = ("acc", "acc_ja")


class MathEvaluator:
    def __init__(self, rows: list[dict[str, Any]], tokenizer, *, objective: str = "acc_ja",
                 options: dict[str, Any] | None = None, generation: dict[str, Any] | None = None,
                 device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if objective not in OBJECTIVES:
            raise ConfigError(f"fitness.options.objective: one of {OBJECTIVES}, got {objective!r}")
        self.rows, self.tokenizer, self.objective = rows, tokenizer, objective
        self.options, self.generation = dict(options or {}), dict(generation or {})
        self.device, self.dtype = device, dtype
        self._candidate = LazyCandidate(device, dtype, self.options)
        self._generator = None
        self.last_answers: list[str] = []
        self.last_scores: dict[str, float] = {}

    def answer(self, model) -> list[str]:
        from evomm.models.textgen import TextGenerator

        if self._generator is None:
            self._generator = TextGenerator(model, self.tokenizer, template=self.options.get("template", "ja-alpaca-cot"),
                                            max_new_tokens=self.generation.get("max_new_tokens", 256),
                                            batch_size=self.generation.get("batch_size", 8))
        return self._generator.with_model(model).generate([r["question"] for r in self.rows])

    def evaluate(self, spec: dict[str, Any]) -> float:
        from evomm.metrics.math import math_accuracy

        self.last_answers = self.answer(self._candidate.apply(spec))
        self.last_scores = math_accuracy([r["answer_number"] for r in self.rows], self.last_answers)
        return self.last_scores[self.objective]


def sample_problems(rows: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    """The same seeded subset for every candidate (file order kept)."""
    return [rows[i] for i in seeded_indices(len(rows), n, seed)]


@register_fitness("math_accuracy_ja")
def math_accuracy_ja(ctx: FitnessContext) -> MathEvaluator:
    from transformers import AutoTokenizer

    from evomm.data.mgsm import load_mgsm

    if not ctx.dataset:
        raise ConfigError("fitness.dataset: math_accuracy_ja needs problems (mgsm_ja.tsv or a JSONL file/folder)")
    dataset = config_relative(ctx.dataset, ctx)
    if dataset.is_dir() and ctx.split and (dataset / f"{ctx.split}.jsonl").is_file():
        dataset = dataset / f"{ctx.split}.jsonl"
    rows = sample_problems(load_mgsm(dataset), ctx.n_samples, int(ctx.options.get("sample_seed", ctx.seed)))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(ctx), trust_remote_code=False)
    dtype = getattr(torch, str(ctx.options.get("dtype", "float32")))
    return MathEvaluator(rows, tokenizer, objective=str(ctx.options.get("objective", "acc_ja")),
                         options=dict(ctx.options), generation=ctx.generation, device=ctx.device, dtype=dtype)
