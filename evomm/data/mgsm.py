"""MGSM word problems (`juletxara/mgsm` layout): `question` and `answer_number` per problem.

Read from a local copy: the dataset's TSV (`mgsm_ja.tsv`: question TAB answer_number, no
header), a JSONL file with those two keys, or a folder holding either. The Japanese test
split has 250 problems. With the network, `load_mgsm("juletxara/mgsm")` asks `datasets`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from evomm.errors import DatasetError


def load_mgsm(source: str | Path, lang: str = "ja", split: str = "test") -> list[dict[str, Any]]:
    """Problems as `{"question": str, "answer_number": float}` rows, in file order."""
    path = Path(source).expanduser()
    if path.is_dir():
        candidates = [path / f"mgsm_{lang}.tsv", path / f"{split}.jsonl", path / f"mgsm_{lang}.jsonl"]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if path.is_file():
        rows = _read_tsv(path) if path.suffix == ".tsv" else _read_jsonl(path)
    elif "/" in str(source) and not path.is_absolute() and len(str(source).split("/")) == 2:
        rows = _from_hub(str(source), lang, split)
    else:
        raise DatasetError(f"{source}: no MGSM file (expected mgsm_{lang}.tsv or a JSONL with question, "
                           "answer_number)")
    if not rows:
        raise DatasetError(f"{path}: no problems")
    return rows


def _row(question: Any, answer: Any, where: str) -> dict[str, Any]:
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"{where}: empty question")
    try:
        number = float(str(answer).replace(",", ""))
    except ValueError:
        raise DatasetError(f"{where}: answer_number {answer!r} is not a number") from None
    return {"question": question, "answer_number": number}


def _read_tsv(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [_row(r[0], r[1], f"{path}:{i}") for i, r in enumerate(csv.reader(handle, delimiter="\t"), 1)
                if len(r) >= 2]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{i}: invalid JSON ({exc.msg})") from None
            rows.append(_row(record.get("question"), record.get("answer_number"), f"{path}:{i}"))
    return rows


def _from_hub(name: str, lang: str, split: str) -> list[dict[str, Any]]:
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, lang, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, missing dataset, ...
        raise DatasetError(f"{name}: not a local file and the hub could not be read ({str(exc).splitlines()[0]})") \
            from None
    return [_row(r["question"], r["answer_number"], f"{name}[{i}]") for i, r in enumerate(dataset)]
