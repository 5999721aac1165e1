"""Benchmark loaders on the shipped fixtures (real schemas) and on broken inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from evomm.data import (
    load_benchmark,
    load_ja_vg_vqa_500,
    load_ja_vlm_bench_in_the_wild,
    load_jsonl,
)
from evomm.errors import DatasetError

FIXTURES = Path(__file__).parent / "fixtures"
VG = FIXTURES / "ja_vg_vqa_500"
WILD = FIXTURES / "ja_vlm_bench_in_the_wild"
JSONL = FIXTURES / "vqa_jsonl" / "data.jsonl"


def test_fixtures_are_small():
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 200_000


def test_ja_vg_vqa_uses_first_qa_of_each_image():
    dataset = load_ja_vg_vqa_500(VG)
    assert dataset.name == "JA-VG-VQA-500"
    assert len(dataset) == 6
    # every image has two QAs (colour, then shape); only the first is taken
    assert dataset.questions == ["図形は何色ですか？"] * 6
    assert dataset.answers == ["赤", "青", "白", "黒", "赤", "青"]
    assert dataset[0].id == "1000"
    image = dataset[0].image
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32)
    # the first image is a red circle on grey: centre pixel is red
    assert image.getpixel((16, 16)) == (220, 30, 30)


def test_parquet_file_and_directory_and_limit():
    file = next((VG / "data").glob("*.parquet"))
    assert load_ja_vg_vqa_500(file).answers == load_ja_vg_vqa_500(VG).answers
    assert len(load_ja_vg_vqa_500(VG, limit=2)) == 2


def test_save_to_disk_directory(tmp_path):
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(WILD / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "saved"))
    from_disk = load_ja_vlm_bench_in_the_wild(tmp_path / "saved")
    from_parquet = load_ja_vlm_bench_in_the_wild(WILD)
    assert from_disk.answers == from_parquet.answers
    assert from_disk[1].image.tobytes() == from_parquet[1].image.tobytes()
    with pytest.raises(DatasetError, match="no split 'validation'"):
        load_ja_vlm_bench_in_the_wild(tmp_path / "saved", split="validation")


def test_in_the_wild_rows():
    dataset = load_ja_vlm_bench_in_the_wild(WILD)
    assert len(dataset) == 4
    assert dataset[1].question == "図形の色と形を教えてください。"
    assert dataset[1].answer == "青い四角です。"


def test_jsonl_format():
    dataset = load_jsonl(JSONL)
    assert [e.answer for e in dataset] == ["赤", "青", "白"]
    assert dataset[0].type == "colour" and dataset[0].keywords == ["赤"]
    assert load_benchmark("jsonl", JSONL, name="toy").name == "toy"


def test_jsonl_language_filter(tmp_path):
    rows = [
        {"image": "images/0.png", "question": "What colour?", "answer": "red", "lang": "en"},
        {"image": "images/0.png", "question": "何色？", "answer": "赤", "lang": "ja"},
        {"image": "images/1.png", "question": "何色？", "answer": "青", "lang": "ja",
         "distractors": ["赤"], "context": "extra keys are ignored"},
    ]
    shutil.copytree(JSONL.parent / "images", tmp_path / "images")
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert [e.answer for e in load_jsonl(path, lang="ja")] == ["赤", "青"]
    assert [e.lang for e in load_jsonl(path)] == ["en", "ja", "ja"]
    with pytest.raises(DatasetError, match="no rows with lang='fr'"):
        load_jsonl(path, lang="fr")
    with pytest.raises(DatasetError, match="all Japanese"):
        load_benchmark("ja-vg-vqa-500", VG, lang="ja")


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="huggingface-cli download SakanaAI/JA-VG-VQA-500"):
        load_ja_vg_vqa_500(tmp_path / "absent")
    with pytest.raises(DatasetError, match="SakanaAI/JA-VLM-Bench-In-the-Wild"):
        load_benchmark("ja-vlm-bench-in-the-wild", None)
    with pytest.raises(DatasetError, match="unknown benchmark kind"):
        load_benchmark("mmlu", tmp_path)


def test_broken_image_file_is_named(tmp_path):
    root = tmp_path / "set"
    shutil.copytree(JSONL.parent, root)
    (root / "images" / "1.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"data.jsonl line 2: image cannot be decoded"):
        load_jsonl(root / "data.jsonl")
    (root / "images" / "1.png").unlink()
    with pytest.raises(DatasetError, match=r"line 2: image file not found"):
        load_jsonl(root / "data.jsonl")


def test_broken_image_bytes_in_parquet(tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(next((WILD / "data").glob("*.parquet")))
    rows = table.to_pylist()
    rows[2]["image"] = {"bytes": b"\x89PNG broken", "path": "x.png"}
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp_path / "test.parquet")
    with pytest.raises(DatasetError, match="JA-VLM-Bench-In-the-Wild row 2: image cannot be decoded"):
        load_ja_vlm_bench_in_the_wild(tmp_path / "test.parquet")


def test_missing_column(tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(next((WILD / "data").glob("*.parquet"))).drop_columns(["answer"])
    pq.write_table(table, tmp_path / "test.parquet")
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['answer'\]"):
        load_ja_vlm_bench_in_the_wild(tmp_path / "test.parquet")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "a.png", "question": "q"}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 1: missing column\(s\) \['answer'\]"):
        load_jsonl(bad)


def test_empty_dataset(tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(next((WILD / "data").glob("*.parquet"))).slice(0, 0)
    pq.write_table(table, tmp_path / "test.parquet")
    with pytest.raises(DatasetError, match="the dataset is empty"):
        load_ja_vlm_bench_in_the_wild(tmp_path / "test.parquet")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="empty"):
        load_jsonl(empty)


def test_bad_json_and_unreadable_parquet(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 1: invalid JSON"):
        load_jsonl(bad)
    junk = tmp_path / "test.parquet"
    junk.write_bytes(b"junk")
    with pytest.raises(DatasetError, match="not a readable parquet file"):
        load_ja_vg_vqa_500(junk)
