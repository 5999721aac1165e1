"""Japanese VQA benchmarks as plain lists of (image, question, answer).

Three sources, one result type:
- JA-VG-VQA-500 (SakanaAI/JA-VG-VQA-500): one row per image with a `qas` list; as in the
  published evaluation, only the first QA of each image is used;
- JA-VLM-Bench-In-the-Wild (SakanaAI/JA-VLM-Bench-In-the-Wild): one row per question with
  `image`, `question`, `answer`;
- the project's JSONL + images format: one JSON object per line,
  `{"image": "rel/path.png", "question": ..., "answer": ..., "type": ..., "keywords": [...],
  "lang": "ja"}` with image paths relative to the JSONL file (only the first three keys are
  required; `lang` lets one file hold several languages and a run pick one).

The Hugging Face sets are read from disk only: a `save_to_disk` directory, a downloaded
dataset repository (its `data/<split>-*.parquet`), or parquet files. Images are decoded up
front so a broken file fails at load time, naming the example, not halfway through a run.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from evomm.errors import DatasetError

JA_VG_VQA_500 = "ja-vg-vqa-500"
JA_VLM_WILD = "ja-vlm-bench-in-the-wild"
JSONL = "jsonl"

HUB_IDS = {
    JA_VG_VQA_500: "SakanaAI/JA-VG-VQA-500",
    JA_VLM_WILD: "SakanaAI/JA-VLM-Bench-In-the-Wild",
}
DISPLAY_NAMES = {
    JA_VG_VQA_500: "JA-VG-VQA-500",
    JA_VLM_WILD: "JA-VLM-Bench-In-the-Wild",
}


@dataclass
class VQAExample:
    question: str
    answer: str
    image: Image.Image
    id: str
    type: str | None = None
    keywords: list[str] | None = None
    lang: str | None = None


@dataclass
class VQADataset(Sequence):
    """A named list of examples (a `Sequence`, so slicing and len() work)."""

    name: str
    examples: list[VQAExample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return VQADataset(self.name, self.examples[index])
        return self.examples[index]

    def __iter__(self) -> Iterator[VQAExample]:
        return iter(self.examples)

    @property
    def questions(self) -> list[str]:
        return [e.question for e in self.examples]

    @property
    def answers(self) -> list[str]:
        return [e.answer for e in self.examples]

    @property
    def images(self) -> list[Image.Image]:
        return [e.image for e in self.examples]


def how_to_get(kind: str, path: Path | str | None) -> str:
    hub_id = HUB_IDS[kind]
    where = f" at {path}" if path else ""
    return (
        f"{DISPLAY_NAMES[kind]} not found{where}. Download it where there is network, e.g. "
        f"`huggingface-cli download {hub_id} --repo-type dataset --local-dir DIR` or "
        f"`datasets.load_dataset('{hub_id}', split='test').save_to_disk(DIR)`, then point "
        f"`path:` at DIR (or at its parquet files)."
    )


# -- reading rows -------------------------------------------------------------------------
def _parquet_files(path: Path, split: str) -> list[Path]:
    if path.is_file():
        return [path]
    patterns = [f"data/{split}-*.parquet", f"{split}-*.parquet", f"*/{split}/*.parquet",
                f"{split}/*.parquet", f"{split}.parquet"]
    for pattern in patterns:
        files = sorted(path.glob(pattern))
        if files:
            return files
    return sorted(path.glob("*.parquet"))


def _rows_from_disk(path: Path, split: str) -> list[dict[str, Any]]:
    """Rows of a `save_to_disk` directory, with images left undecoded (bytes/path dicts)."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetError(f"{path}: no split {split!r} (has {sorted(loaded)})")
        loaded = loaded[split]
    for name, feature in loaded.features.items():
        if isinstance(feature, datasets.Image):
            loaded = loaded.cast_column(name, datasets.Image(decode=False))
    return loaded.to_list()


def _rows_from_parquet(files: list[Path]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for file in files:
        try:
            rows.extend(pq.read_table(file).to_pylist())
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise DatasetError(f"{file}: not a readable parquet file ({exc})") from exc
    return rows


def read_rows(kind: str, path: str | Path | None, split: str = "test") -> list[dict[str, Any]]:
    """Raw rows of a Hugging Face benchmark stored locally (see module docstring)."""
    if path is None:
        raise DatasetError(how_to_get(kind, None))
    path = Path(path)
    if not path.exists():
        raise DatasetError(how_to_get(kind, path))
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        return _rows_from_disk(path, split)
    files = _parquet_files(path, split)
    if not files:
        raise DatasetError(f"{path}: no parquet files or saved dataset. " + how_to_get(kind, None))
    return _rows_from_parquet(files)


# -- decoding ------------------------------------------------------------------------------
def decode_image(value: Any, where: str, root: Path | None = None) -> Image.Image:
    """An RGB PIL image from a PIL image, an HF image dict ({bytes, path}), bytes or a path."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(_resolve(value["path"], root))
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, (str, Path)):
            image = Image.open(_resolve(value, root))
        else:
            raise DatasetError(f"{where}: no image (got {type(value).__name__})")
        image.load()
        return image.convert("RGB")
    except DatasetError:
        raise
    except FileNotFoundError as exc:
        raise DatasetError(f"{where}: image file not found ({exc.filename})") from exc
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise DatasetError(f"{where}: image cannot be decoded ({type(exc).__name__}: {exc})") from exc


def _resolve(path: str | Path, root: Path | None) -> Path:
    path = Path(path)
    return path if path.is_absolute() or root is None else root / path


def _require(row: dict[str, Any], columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {missing} (has {sorted(row)})")


def _text(value: Any, column: str, where: str) -> str:
    if not isinstance(value, str):
        raise DatasetError(f"{where}: column {column!r} should be text, got {type(value).__name__}")
    return value


def _finish(name: str, examples: list[VQAExample], limit: int | None) -> VQADataset:
    if not examples:
        raise DatasetError(f"{name}: the dataset is empty")
    return VQADataset(name, examples[:limit] if limit else examples)


# -- the three loaders -----------------------------------------------------------------------
def load_ja_vg_vqa_500(path: str | Path | None, split: str = "test",
                       limit: int | None = None) -> VQADataset:
    """JA-VG-VQA-500: the first QA of each image's `qas` list (as published)."""
    name = DISPLAY_NAMES[JA_VG_VQA_500]
    rows = read_rows(JA_VG_VQA_500, path, split)
    rows = rows[:limit] if limit else rows
    examples = []
    for i, row in enumerate(rows):
        where = f"{name} row {i}"
        _require(row, ("qas", "image"), where)
        qas = row["qas"]
        if not qas:
            raise DatasetError(f"{where}: empty 'qas' list")
        _require(qas[0], ("question", "answer"), f"{where} qas[0]")
        examples.append(VQAExample(
            question=_text(qas[0]["question"], "question", where),
            answer=_text(qas[0]["answer"], "answer", where),
            image=decode_image(row["image"], where),
            id=str(row.get("image_id", i)),
        ))
    return _finish(name, examples, limit)


def load_ja_vlm_bench_in_the_wild(path: str | Path | None, split: str = "test",
                                  limit: int | None = None) -> VQADataset:
    """JA-VLM-Bench-In-the-Wild: one row per question."""
    name = DISPLAY_NAMES[JA_VLM_WILD]
    rows = read_rows(JA_VLM_WILD, path, split)
    rows = rows[:limit] if limit else rows
    examples = []
    for i, row in enumerate(rows):
        where = f"{name} row {i}"
        _require(row, ("question", "answer", "image"), where)
        examples.append(VQAExample(
            question=_text(row["question"], "question", where),
            answer=_text(row["answer"], "answer", where),
            image=decode_image(row["image"], where),
            id=str(row.get("id", i)),
        ))
    return _finish(name, examples, limit)


def load_jsonl(path: str | Path, limit: int | None = None, name: str | None = None,
               lang: str | None = None) -> VQADataset:
    """The project's JSONL + images format (image paths relative to the JSONL file);
    `lang` keeps only the rows whose "lang" equals it."""
    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise DatasetError(f"{path}: JSONL dataset file not found")
    examples = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: expected a JSON object")
            if lang is not None and row.get("lang") != lang:
                continue
            _require(row, ("image", "question", "answer"), where)
            keywords = row.get("keywords")
            if keywords is not None and not (
                isinstance(keywords, list) and all(isinstance(k, str) for k in keywords)
            ):
                raise DatasetError(f"{where}: 'keywords' should be a list of strings")
            examples.append(VQAExample(
                question=_text(row["question"], "question", where),
                answer=_text(row["answer"], "answer", where),
                image=decode_image(row["image"], where, root=path.parent),
                id=str(row.get("id", line_no)),
                type=row.get("type"),
                keywords=keywords,
                lang=row.get("lang"),
            ))
            if limit and len(examples) >= limit:
                break
    if not examples and lang is not None:
        raise DatasetError(f"{name}: no rows with lang={lang!r} in {path}")
    return _finish(name, examples, limit)


LOADERS = {
    JA_VG_VQA_500: load_ja_vg_vqa_500,
    JA_VLM_WILD: load_ja_vlm_bench_in_the_wild,
}


def load_benchmark(kind: str, path: str | Path | None, split: str = "test",
                   limit: int | None = None, name: str | None = None,
                   lang: str | None = None) -> VQADataset:
    """Dispatch on `kind`: ja-vg-vqa-500, ja-vlm-bench-in-the-wild or jsonl."""
    kind = kind.lower()
    if kind == JSONL:
        if path is None:
            raise DatasetError("a jsonl benchmark needs `path:` (the .jsonl file)")
        return load_jsonl(path, limit=limit, name=name, lang=lang)
    if lang is not None:
        raise DatasetError(f"`lang` selects rows of a jsonl benchmark; {kind} is all Japanese")
    if kind not in LOADERS:
        raise DatasetError(f"unknown benchmark kind {kind!r}; use one of "
                           f"{sorted([*LOADERS, JSONL])}")
    dataset = LOADERS[kind](path, split=split, limit=limit)
    if name:
        dataset.name = name
    return dataset
