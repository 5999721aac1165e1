"""`vqa_rouge_ja`: score a merge candidate by answering Japanese questions about images.

The fitness of EvoVLM-JP. One `CandidateModel` (PS weights written in place, or a DFS model
re-routed) and one `VLMGenerator` are built on the first candidate and reused; each
candidate answers the same fixed, seeded subset of the fitness split with batched greedy
generation and gets a score (higher is better, 0-100):

    fitness:
      metric: vqa_rouge_ja
      dataset: ../assets/zoo/data       # a folder holding {split}.jsonl, or a .jsonl file
      split: fitness
      n_samples: 60                     # drawn per question type (stratified), seeded
      generation: {max_new_tokens: 16, batch_size: 64}
      options:
        objective: rougeL+keyword       # rougeL | rougeL_strict | keyword | rougeL+keyword
        lang: ja                        # rows of this language only
        prompt: "USER: {image} {question} ASSISTANT:"   # or template: ja-vqa (VLMGenerator's)
        processor: vlm                  # source name or path (default: the first model with one)

Objectives: `rougeL` is Japanese ROUGE-L (MeCab tokens); `rougeL_strict` scores non-Japanese
answers 0; `keyword` is key-word accuracy (the answer names the asked value and no competing
one; rows need `keywords`); `rougeL+keyword` is their mean, which keeps a fluent but wrong
sentence frame from winning on ROUGE-L alone.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from evomm.errors import ConfigError, DatasetError
from evomm.models.vlm import VLMGenerator
from evomm.fitness.common import LazyCandidate
from evomm.fitness.registry import FitnessContext, register_fitness

OBJECTIVES = ("rougeL", "rougeL_strict", "keyword", "rougeL+keyword")
DEFAULT_PROMPT = "USER: {image} {question} ASSISTANT:"


# -- data ------------------------------------------------------------------------------------
def split_file(dataset: str | Path, split: str | None) -> Path:
    """`dataset` is a .jsonl file, or a folder holding `{split}.jsonl`."""
    path = Path(dataset)
    if path.suffix == ".jsonl":
        return path
    if not split:
        raise ConfigError(f"fitness.split: {path} is a folder; name the split to read from it")
    return path / f"{split}.jsonl"


def load_records(dataset: str | Path, split: str | None = None, lang: str | None = "ja",
                 load_images: bool = True) -> list[dict[str, Any]]:
    """Rows of a JSONL VQA split (image paths relative to the file), images opened as RGB."""
    path = split_file(dataset, split)
    if not path.is_file():
        raise DatasetError(f"{path}: VQA split not found")
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path.name} line {line_no}: invalid JSON ({exc.msg})") from None
        if lang is not None and row.get("lang") != lang:
            continue
        for key in ("image", "question", "answer"):
            if key not in row:
                raise DatasetError(f"{path.name} line {line_no}: no {key!r}")
        row["image_path"] = str(path.parent / row["image"])
        rows.append(row)
    if not rows:
        raise DatasetError(f"{path}: no rows" + (f" with lang={lang!r}" if lang else ""))
    if load_images:
        from PIL import Image

        for row in rows:
            with Image.open(row["image_path"]) as image:
                row["pil"] = image.convert("RGB")
    return rows


def sample_records(rows: Sequence[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    """A fixed subset of `n` rows, spread evenly over question types (seeded; file order kept)."""
    if n is None or n >= len(rows):
        return list(rows)
    by_type: dict[Any, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_type[row.get("type")].append(i)
    rng = random.Random(seed)
    for idx in by_type.values():
        rng.shuffle(idx)
    chosen: list[int] = []
    queues = [by_type[t] for t in sorted(by_type, key=str)]
    while len(chosen) < n:  # round-robin over types
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop())
    return [rows[i] for i in sorted(chosen)]


# -- scoring ---------------------------------------------------------------------------------
class AnswerScorer:
    """ROUGE-L, strict ROUGE-L, key-word accuracy (overall and per question type) of answers."""

    def __init__(self) -> None:
        from evomm.metrics.language import default_detector
        from evomm.metrics.rouge import JapaneseRouge

        self.rouge = JapaneseRouge()
        self.detector = default_detector()

    def rouge_l(self, refs: Sequence[str], preds: Sequence[str], strict: bool = False) -> float:
        from evomm.metrics import rouge_ja

        kwargs = {"strict_japanese": True, "detector": self.detector} if strict else {}
        return float(rouge_ja(list(refs), list(preds), scorer=self.rouge, **kwargs)["rougeL"])

    @staticmethod
    def keyword(rows: Sequence[dict[str, Any]], preds: Sequence[str]) -> float:
        from evomm.zoo.score import keyword_accuracy

        if any(not row.get("keywords") for row in rows):
            raise DatasetError("key-word accuracy needs `keywords` on every row")
        return keyword_accuracy(list(preds), [r["keywords"] for r in rows],
                                [r.get("distractors", []) for r in rows])

    def objective(self, name: str, rows: Sequence[dict[str, Any]], preds: Sequence[str]) -> float:
        refs = [r["answer"] for r in rows]
        if name == "rougeL":
            return self.rouge_l(refs, preds)
        if name == "rougeL_strict":
            return self.rouge_l(refs, preds, strict=True)
        if name == "keyword":
            return self.keyword(rows, preds)
        if name == "rougeL+keyword":
            return 0.5 * (self.rouge_l(refs, preds) + self.keyword(rows, preds))
        raise ConfigError(f"fitness.options.objective: one of {OBJECTIVES}, got {name!r}")

    def all(self, rows: Sequence[dict[str, Any]], preds: Sequence[str]) -> dict[str, Any]:
        """Every measure the report shows."""
        refs = [r["answer"] for r in rows]
        out: dict[str, Any] = {"rougeL": self.rouge_l(refs, preds),
                               "rougeL_strict": self.rouge_l(refs, preds, strict=True), "n": len(rows)}
        if all(row.get("keywords") for row in rows):
            out["keyword_acc"] = self.keyword(rows, preds)
            by_type: dict[str, list[int]] = defaultdict(list)
            for i, row in enumerate(rows):
                by_type[str(row.get("type"))].append(i)
            out["by_type"] = {t: self.keyword([rows[i] for i in idx], [preds[i] for i in idx])
                              for t, idx in sorted(by_type.items())}
        return out


# -- generation ------------------------------------------------------------------------------
class PromptVLMGenerator(VLMGenerator):
    """A `VLMGenerator` whose prompt is a format string with `{image}` and `{question}`
    (the layout a model was trained with, e.g. the toy zoo's `USER: <image> Q ASSISTANT:`)."""

    def __init__(self, model, processor, prompt: str = DEFAULT_PROMPT, **kwargs) -> None:
        if "{question}" not in prompt:
            raise ConfigError(f"prompt {prompt!r} has no {{question}} field")
        super().__init__(model, processor, template=prompt, **kwargs)


def make_generator(model, processor, options: dict[str, Any], generation: dict[str, Any]) -> VLMGenerator:
    settings = {"max_new_tokens": 16, "batch_size": 64, **generation}
    if options.get("template"):
        return VLMGenerator(model, processor, template=options["template"], generation=settings)
    return PromptVLMGenerator(model, processor, prompt=options.get("prompt", DEFAULT_PROMPT), generation=settings)


def load_processor(path: str | Path):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a processor from {path}: {str(exc).splitlines()[0]}") from None


def find_processor_source(candidates: Sequence[str]) -> str:
    """The first checkpoint folder that carries an image processor (LLaVA's processor files)."""
    for path in candidates:
        folder = Path(path)
        if (folder / "processor_config.json").is_file() or (folder / "preprocessor_config.json").is_file():
            return str(folder)
    raise ConfigError(f"fitness.options.processor: none of {list(candidates)} has a processor; name one")


# -- the evaluator ---------------------------------------------------------------------------
class VQARougeEvaluator:
    """Answers the fixed question subset with each candidate and returns the objective."""

    def __init__(self, rows: list[dict[str, Any]], processor, *, objective: str = "rougeL",
                 options: dict[str, Any] | None = None, generation: dict[str, Any] | None = None,
                 device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if objective not in OBJECTIVES:
            raise ConfigError(f"fitness.options.objective: one of {OBJECTIVES}, got {objective!r}")
        self.rows = rows
        self.processor = processor
        self.objective = objective
        self.options = dict(options or {})
        self.generation = dict(generation or {})
        self.device, self.dtype = device, dtype
        self.scorer = AnswerScorer()
        self._candidate = LazyCandidate(device, dtype, self.options)
        self._generator: VLMGenerator | None = None
        self.last_answers: list[str] = []

    def answer(self, model) -> list[str]:
        if self._generator is None:
            self._generator = make_generator(model, self.processor, self.options, self.generation)
        generator = self._generator.with_model(model)
        return generator.generate([r["question"] for r in self.rows], [r["pil"] for r in self.rows])

    def evaluate(self, spec: dict[str, Any]) -> float:
        model = self._candidate.apply(spec)
        self.last_answers = self.answer(model)
        return self.scorer.objective(self.objective, self.rows, self.last_answers)


def _processor_path(ctx: FitnessContext) -> str:
    name = ctx.options.get("processor")
    if name:
        return ctx.sources.get(str(name), str(name))
    models = list(ctx.space.get("models") or [])
    if ctx.space.get("evomm", {}).get("keep_from"):
        models.insert(0, ctx.sources.get(ctx.space["evomm"]["keep_from"], ctx.space["evomm"]["keep_from"]))
    return find_processor_source(models)


@register_fitness("vqa_rouge_ja")
def vqa_rouge_ja(ctx: FitnessContext) -> VQARougeEvaluator:
    if not ctx.dataset:
        raise ConfigError("fitness.dataset: vqa_rouge_ja needs a JSONL split (or a folder of them)")
    options = dict(ctx.options)
    dataset = Path(ctx.dataset)
    if not dataset.is_absolute() and ctx.config_dir:
        dataset = Path(ctx.config_dir) / dataset
    rows = load_records(dataset, ctx.split, lang=options.get("lang", "ja"))
    rows = sample_records(rows, ctx.n_samples, seed=int(options.get("sample_seed", ctx.seed)))
    dtype = getattr(torch, str(options.get("dtype", "float32")))
    return VQARougeEvaluator(
        rows, load_processor(_processor_path(ctx)), objective=str(options.get("objective", "rougeL")),
        options=options, generation=ctx.generation, device=ctx.device, dtype=dtype,
    )
