"""Answer the toy VQA sets with zoo models and score the answers (key words + ROUGE-L).

Kept small and self-contained so the zoo can be checked (and merges probed) without the
pipeline; the evolution's own generation wrapper lives in `evomm.models`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

from evomm.errors import DatasetError
from evomm.zoo import score
from evomm.zoo.train import format_prompt


def load_split(data_dir: str | Path, split: str, lang: str | None = "ja") -> list[dict]:
    """Records of `{split}.jsonl` (optionally one language) with absolute image paths."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DatasetError(f"no split file {path}")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        row["image_path"] = str(Path(data_dir) / row["image"])
    return [r for r in rows if lang is None or r["lang"] == lang]


@torch.no_grad()
def answer_with_vlm(model, processor, records: Sequence[dict], batch_size: int = 50,
                    max_new_tokens: int = 48) -> list[str]:
    """Greedy answers of a LLaVA model to each record's image + question."""
    from PIL import Image

    tokenizer = processor.tokenizer
    answers: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        prompts = [format_prompt(r["question"], processor.image_token) for r in chunk]
        images = [Image.open(r["image_path"]).convert("RGB") for r in chunk]
        inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        answers += [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


@torch.no_grad()
def answer_with_lm(model, tokenizer, records: Sequence[dict], batch_size: int = 50,
                   max_new_tokens: int = 48) -> list[str]:
    """Greedy text-only answers (no image: the question alone) of a causal LM."""
    answers: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        inputs = tokenizer([format_prompt(r["question"]) for r in chunk], return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        answers += [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def rouge_l(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Japanese ROUGE-L (evomm.metrics.rouge_ja) when available, else a character-level LCS F1."""
    try:
        from evomm.metrics import rouge_ja
    except ImportError:
        return char_lcs_f1(references, predictions)
    return float(rouge_ja(list(references), list(predictions))["rougeL"])


def char_lcs_f1(references: Sequence[str], predictions: Sequence[str]) -> float:
    """PLACEHOLDER metric: mean character-level LCS F-measure x 100 (not MeCab ROUGE-L)."""
    total = 0.0
    for ref, pred in zip(references, predictions):
        if not ref or not pred:
            continue
        prev = [0] * (len(pred) + 1)
        for a in ref:
            cur = [0]
            for j, b in enumerate(pred):
                cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
            prev = cur
        lcs = prev[-1]
        if lcs:
            p, r = lcs / len(pred), lcs / len(ref)
            total += 2 * p * r / (p + r)
    return 100.0 * total / max(1, len(references))


def score_answers(records: Sequence[dict], answers: Sequence[str]) -> dict:
    """Overall and per-question-type key-word accuracy, plus ROUGE-L."""
    by_type: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_type[record["type"]].append(index)
    result = {
        "keyword_acc": score.keyword_accuracy(answers, [r["keywords"] for r in records],
                                              [r.get("distractors", []) for r in records]),
        "rougeL": rouge_l([r["answer"] for r in records], answers),
        "by_type": {},
    }
    for qtype, idx in sorted(by_type.items()):
        result["by_type"][qtype] = score.keyword_accuracy(
            [answers[i] for i in idx], [records[i]["keywords"] for i in idx],
            [records[i].get("distractors", []) for i in idx])
    return result
