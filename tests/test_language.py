"""The offline Japanese detector used by strict ROUGE, and the fastText switch."""

from __future__ import annotations

import sys
import types

import pytest

from evomm.metrics import language
from evomm.metrics.language import (
    FastTextLanguageDetector,
    ScriptLanguageDetector,
    default_detector,
    script_counts,
)

JAPANESE = [
    "白い犬です。",
    "テーブル",
    "ｽﾏｰﾄﾌｫﾝ",  # half-width katakana
    "白",  # kanji-only short answer
    "自転車",
    "これはiPhoneです",  # Latin brand name inside Japanese
    "2つあります",
    "東京タワーの高さは333メートルです。",
    "赤いTシャツを着た男性",
]
NOT_JAPANESE = [
    "A white dog.",
    "The answer is 白",  # mostly Latin letters
    "ＡＢＣ",  # full-width Latin is still Latin
    "Это собака",  # Cyrillic
    "이것은 개입니다",  # Hangul
    "我们今天去了北京的故宫博物院参观了很多文物和历史建筑",  # long kana-free Han: Chinese
    "",
    "2",
    "!!! ...",
    "white dog です",  # 8 Latin letters vs 2 kana
]


@pytest.mark.parametrize("text", JAPANESE)
def test_japanese_texts(text):
    assert ScriptLanguageDetector().is_japanese(text)


@pytest.mark.parametrize("text", NOT_JAPANESE)
def test_non_japanese_texts(text):
    assert not ScriptLanguageDetector().is_japanese(text)


def test_counts_and_thresholds():
    counts = script_counts("これはiPhoneです")
    assert (counts.kana, counts.kanji, counts.latin) == (5, 0, 6)
    assert counts.japanese_share() == pytest.approx(5 / (5 + 0.5 * 6))
    assert counts.japanese_share(1.0) == pytest.approx(5 / 11)
    # with every letter weighing the same, the brand name would outvote the sentence
    assert not ScriptLanguageDetector(foreign_letter_weight=1.0).is_japanese("これはiPhoneです")
    assert not ScriptLanguageDetector(min_share=0.7).is_japanese("これはiPhoneです")
    assert ScriptLanguageDetector(neutral_is_japanese=True).is_japanese("123")
    assert not ScriptLanguageDetector(max_kanji_only=2).is_japanese("自転車")


def test_default_is_script_detector_without_env(monkeypatch):
    monkeypatch.delenv(language.LID_ENV, raising=False)
    assert isinstance(default_detector(), ScriptLanguageDetector)


def test_missing_fasttext_model_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv(language.LID_ENV, str(tmp_path / "absent.ftz"))
    assert isinstance(default_detector(), ScriptLanguageDetector)


def test_fasttext_used_when_env_points_at_a_model(monkeypatch, tmp_path):
    """fastText itself is not installed here; a stand-in module checks the plumbing:
    newline stripping, k=-1, and the P(ja) >= 0.5 rule."""
    model_file = tmp_path / "lid.176.ftz"
    model_file.write_bytes(b"stub")
    seen = []

    class FakeModel:
        def __init__(self, model_path):
            assert model_path == str(model_file)

        def predict(self, text, k):
            seen.append((text, k))
            p_ja = 0.9 if any("\u3040" <= c <= "\u30ff" for c in text) else 0.1
            return ("__label__ja", "__label__en"), (p_ja, 1 - p_ja)

    fake_pkg = types.ModuleType("fasttext")
    fake_mod = types.ModuleType("fasttext.FastText")
    fake_mod._FastText = FakeModel
    fake_pkg.FastText = fake_mod
    monkeypatch.setitem(sys.modules, "fasttext", fake_pkg)
    monkeypatch.setitem(sys.modules, "fasttext.FastText", fake_mod)
    monkeypatch.setenv(language.LID_ENV, str(model_file))

    detector = default_detector()
    assert isinstance(detector, FastTextLanguageDetector)
    assert detector.is_japanese("白い\n犬です")
    assert not detector.is_japanese("a dog")
    assert seen[0] == ("白い犬です", -1)
