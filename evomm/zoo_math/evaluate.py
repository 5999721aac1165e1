"""Answer the toy math sets with any causal LM and score them (accuracy, per kind, Japanese-only)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from evomm.metrics.math import math_accuracy
from evomm.zoo_math.build import TEMPLATE


def read_split(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def answer(model, tokenizer, rows: list[dict[str, Any]], *, max_new_tokens: int = 48,
           batch_size: int = 100, template: str = TEMPLATE) -> list[str]:
    from evomm.models.textgen import TextGenerator

    generator = TextGenerator(model.eval(), tokenizer, template=template, max_new_tokens=max_new_tokens,
                              batch_size=batch_size)
    return generator.generate([r["question"] for r in rows])


def score(rows: list[dict[str, Any]], answers: list[str]) -> dict[str, Any]:
    """`acc`, `acc_ja` (×100) overall and per kind."""
    out: dict[str, Any] = dict(math_accuracy([r["answer_number"] for r in rows], answers))
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_kind[r.get("kind", "all")].append(i)
    out["by_kind"] = {kind: math_accuracy([rows[i]["answer_number"] for i in idx], [answers[i] for i in idx])
                      for kind, idx in sorted(by_kind.items())}
    return out


@torch.inference_mode()
def evaluate_model(model, tokenizer, rows, **kwargs) -> tuple[dict[str, Any], list[str]]:
    answers = answer(model, tokenizer, rows, **kwargs)
    return score(rows, answers), answers
