"""The toy data: deterministic, disjoint splits, content-bearing answers, key-word scoring."""

import hashlib
import json

import pytest

from evomm.errors import MetricError
from evomm.zoo import data as D
from evomm.zoo.score import answer_names, keyword_accuracy

SIZES = {"train": 300, "fitness": 60, "test": 80}


def test_splits_are_deterministic_and_balanced():
    first, second = D.make_splits(SIZES, seed=3), D.make_splits(SIZES, seed=3)
    assert first == second
    assert D.make_splits(SIZES, seed=4)["test"] != first["test"]
    for split, items in first.items():
        assert len(items) == SIZES[split]
        counts = {t: sum(i.qtype == t for i in items) for t in D.QUESTION_TYPES}
        assert max(counts.values()) - min(counts.values()) <= 1


def test_written_splits_share_no_image_or_question(tmp_path):
    D.write_dataset(tmp_path, SIZES, seed=1)
    image_hashes, pairs = {}, {}
    for split in D.SPLITS:
        rows = [json.loads(line) for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == 2 * SIZES[split] and {r["lang"] for r in rows} == {"en", "ja"}
        image_hashes[split] = {hashlib.sha256((tmp_path / r["image"]).read_bytes()).hexdigest() for r in rows}
        pairs[split] = {(r["image"], r["question"]) for r in rows}
        assert set(rows[0]) >= {"image", "question", "answer", "type", "keywords", "lang"}
    assert not image_hashes["test"] & image_hashes["fitness"]
    assert not image_hashes["test"] & image_hashes["train"]
    assert not image_hashes["fitness"] & image_hashes["train"]
    # held-out splits never repeat an image within themselves either
    test_rows = (tmp_path / "test.jsonl").read_text().splitlines()
    assert len(image_hashes["test"]) == len(test_rows) // 2
    assert not pairs["test"] & pairs["fitness"]


def test_answers_are_full_sentences_naming_the_asked_value():
    for item in D.make_splits({"test": 50}, seed=0)["test"]:
        for lang in ("en", "ja"):
            text = D.answer(item, lang)
            keys, distractors = D.keywords(item, lang)
            assert answer_names(text, keys, distractors), (text, keys, distractors)
            assert len(text) >= (25 if lang == "en" else 12)
            assert text.count("." if lang == "en" else "。") >= 2


def test_green_traffic_light_is_ao_in_japanese():
    scene = D.Scene("signal", "white", colour="green", shape="horizontal", jitter=((0, 0, 0),))
    item = D.Item(scene, "signal")
    assert D.keywords(item, "ja")[0] == ["青"]
    assert D.keywords(item, "en")[0] == ["green"]
    shape_item = D.Item(D.Scene("shapes", "white", "green", "circle", ((0, 0),), ((0, 0, 11),)), "colour")
    assert D.keywords(shape_item, "ja")[0] == ["緑"]
    image = D.draw(scene)
    assert image.size == (D.IMAGE_SIZE, D.IMAGE_SIZE)


def test_keyword_accuracy_counts_hits_and_rejects_hedging():
    preds = ["赤です。左上に赤い円があります。", "青です。", "赤か青です。"]
    keys = [["赤"], ["赤"], ["赤"]]
    assert keyword_accuracy(preds, keys) == pytest.approx(200 / 3)
    assert keyword_accuracy(preds, keys, [["青"], ["青"], ["青"]]) == pytest.approx(100 / 3)
    assert keyword_accuracy(["It is RED."], [["red"]]) == 100.0
    with pytest.raises(MetricError):
        keyword_accuracy(["a"], [])
