"""The toy EvoLLM-JP world's problems: parallel English/Japanese, correct arithmetic, disjoint splits."""

import re

from evomm.metrics.language import ScriptLanguageDetector
from evomm.metrics.math import extract_answer_number
from evomm.zoo_math.data import KINDS, problems, split_problems


def test_problems_are_deterministic_distinct_and_cover_every_kind():
    a, b = problems(0, 200), problems(0, 200)
    assert a == b and problems(1, 200) != a
    assert {p.kind for p in a} == set(KINDS)
    assert len({(p.kind, p.numbers, p.ops, p.name, p.obj) for p in a}) == 200
    assert all(len(p.ops) in (2, 3) for p in a if p.kind == "multi")


def test_answers_reason_step_by_step_and_end_with_the_right_number():
    detector = ScriptLanguageDetector()
    for p in problems(3, 400):
        value = p.numbers[0]
        for op, n in zip(p.ops, p.numbers[1:]):
            value = value + n if op == "+" else value - n if op == "-" else value * n
            assert value >= 0
        assert value == p.answer_number
        for lang in ("en", "ja"):
            question, answer = p.text(lang)
            assert extract_answer_number(answer) == p.answer_number  # Sakana's scoring reads it right
            assert len(re.findall(r"=", answer)) == len(p.ops)  # one step per operation
            assert detector.is_japanese(answer) == (lang == "ja") and detector.is_japanese(question) == (lang == "ja")
        en_q, _ = p.text("en")
        ja_q, _ = p.text("ja")
        assert sorted(re.findall(r"\d+", en_q)) == sorted(re.findall(r"\d+", ja_q))  # parallel: the same numbers


def test_splits_are_disjoint():
    splits = split_problems(0, {"train": 600, "fitness": 50, "test": 100})
    keys = {name: {(p.kind, p.numbers, p.ops, p.name, p.obj) for p in ps} for name, ps in splits.items()}
    assert [len(v) for v in keys.values()] == [600, 50, 100]
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["fitness"] and not keys["fitness"] & keys["test"]
    records = splits["test"][0].records()
    assert [r["lang"] for r in records] == ["en", "ja"] and records[1]["answer"].endswith(f"答えは{records[1]['answer_number']}です。")
