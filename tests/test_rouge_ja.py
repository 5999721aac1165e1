"""rouge_ja must reproduce the published EvoVLM-JP scoring (rouge_score + MeCab wakati +
emoji/neologdn/whitespace normalisation) number for number."""

from __future__ import annotations

import random
import re

import emoji
import neologdn
import numpy as np
import pytest
from fugashi import Tagger
from rouge_score import rouge_scorer

from evomm.errors import MetricError
from evomm.metrics import JapaneseRouge, rouge_ja
from evomm.metrics.rouge import bootstrap_interval, lcs_length


class PublishedTokenizer:
    """The published recipe, written out directly (a fresh tagger, char-by-char emoji test)."""

    def __init__(self) -> None:
        self.tagger = Tagger("-Owakati")

    @staticmethod
    def normalize(text: str) -> str:
        text = "".join("" if emoji.is_emoji(c) else c for c in text)
        pattern = re.compile(
            "[\U0001F600-\U0001F64F\U0001F300-\U0001F5FF\U0001F680-\U0001F6FF"
            "\U0001F1E0-\U0001F1FF\U00002702-\U000027B0]+",
            flags=re.UNICODE,
        )
        text = pattern.sub("", text)
        text = neologdn.normalize(text)
        return " ".join(text.split())

    def tokenize(self, text: str) -> list[str]:
        return self.tagger.parse(self.normalize(text)).split()


def published_per_pair(refs, preds):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=PublishedTokenizer())
    rows = [scorer.score(r, p) for r, p in zip(refs, preds)]
    return {k: np.array([row[k].fmeasure for row in rows]) for k in ("rouge1", "rouge2", "rougeL")}


RAMBLING = (
    "この画像には、公園のベンチに座っている男性が写っています。彼は新聞を読んでいるようで、"
    "背景には木々と青い空が見えます。天気は晴れていて、とても穏やかな雰囲気です。"
) * 6

PAIRS = [
    # identical
    ("白い犬です。", "白い犬です。"),
    ("東京タワー", "東京タワー"),
    ("2つ", "2つ"),
    # paraphrases / partial overlap
    ("男性は自転車に乗っています。", "自転車に乗った男性がいます。"),
    ("テーブルの上にリンゴがある", "机の上にりんごが置いてあります"),
    ("空は青い", "青い空です"),
    ("猫が寝ている", "犬が走っている"),
    ("赤", "赤色です"),
    ("晴れ", "曇り"),
    ("この写真は京都の金閣寺です。", "写真に写っているのは金閣寺です"),
    # full-width / half-width variants (neologdn folds them)
    ("ＡＢＣ１２３", "ABC123"),
    ("ｶﾀｶﾅ", "カタカナ"),
    ("３人", "3人"),
    ("ｽﾏｰﾄﾌｫﾝを持っている", "スマートフォンを持っています"),
    ("Ｔシャツ", "ｔシャツ"),
    ("うーーーーん", "うーん"),
    # emoji and dingbats
    ("ケーキです🎂", "ケーキです"),
    ("楽しい😀😀", "楽しい"),
    ("✔ 完了", "完了"),
    ("花🌸が咲いている🇯🇵", "花が咲いている"),
    ("👍", "良い"),
    # whitespace
    ("  白い   犬 ", "白い 犬"),
    ("改行\nあり", "改行 あり"),
    # English predictions / references
    ("白い犬", "A white dog."),
    ("The dog is white", "The dog is white"),
    ("犬は白い", "The dog is white and fluffy."),
    ("Tokyo Tower", "東京タワー (Tokyo Tower)"),
    # empty predictions
    ("白い犬", ""),
    ("犬", "   "),
    ("", ""),
    ("", "何か"),
    # long rambling predictions
    ("男性が新聞を読んでいる", RAMBLING),
    (RAMBLING[:80], RAMBLING),
    ("公園", RAMBLING + "公園、公園、公園。"),
    # repeated tokens (counts clip, LCS order matters)
    ("犬 犬 犬 猫", "犬 猫 猫 猫"),
    ("はい、はい、はい", "はい"),
    # numbers, punctuation, mixed
    ("約10時30分です。", "10:30ごろ"),
    ("「こんにちは」と言った", "こんにちは、と言いました！"),
]


def test_at_least_thirty_varied_pairs():
    assert len(PAIRS) >= 30


def test_per_pair_scores_match_published_recipe_exactly():
    refs, preds = zip(*PAIRS)
    expected = published_per_pair(refs, preds)
    ours = JapaneseRouge().score_pairs(refs, preds)
    for name in ("rouge1", "rouge2", "rougeL"):
        mismatch = [
            (PAIRS[i], expected[name][i], ours[name][i])
            for i in range(len(PAIRS))
            if expected[name][i] != ours[name][i]
        ]
        assert not mismatch, (name, mismatch[:3])
    # the set really varies: some zeros, some perfect, some in between
    assert (ours["rougeL"] == 0).any() and (ours["rougeL"] == 1).any()
    assert ((ours["rougeL"] > 0) & (ours["rougeL"] < 1)).sum() >= 10


def test_mean_matches_published_mean():
    refs, preds = zip(*PAIRS)
    expected = published_per_pair(refs, preds)
    result = rouge_ja(list(refs), list(preds))
    assert set(result) == {"rouge1", "rouge2", "rougeL"}
    for name in result:
        assert result[name] == pytest.approx(float(np.mean(expected[name])) * 100, abs=1e-12)


def test_normalisation_matches_published():
    scorer = JapaneseRouge()
    for ref, pred in PAIRS:
        for text in (ref, pred):
            assert scorer.normalize(text) == PublishedTokenizer.normalize(text)


def test_default_rouge_tokenizer_would_drop_japanese():
    """Why the custom tokenizer matters: rouge_score's default scores Japanese as empty."""
    default = rouge_scorer.RougeScorer(["rougeL"])
    assert default.score("白い犬", "白い犬")["rougeL"].fmeasure == 0.0
    assert rouge_ja(["白い犬"], ["白い犬"])["rougeL"] == 100.0


def test_bit_parallel_lcs_equals_dynamic_programming():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randrange(5) for _ in range(rng.randrange(0, 40))]
        b = [rng.randrange(5) for _ in range(rng.randrange(0, 40))]
        positions: dict[int, int] = {}
        for i, s in enumerate(a):
            positions[s] = positions.get(s, 0) | (1 << i)
        expected = rouge_scorer._lcs_table(a, b)[-1][-1] if a and b else 0
        assert lcs_length(positions, len(a), b) == expected


def test_empty_prediction_scores_zero_and_length_mismatch_raises():
    assert rouge_ja(["白い犬"], [""]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rouge_ja(["白い犬"], [None])["rougeL"] == 0.0
    with pytest.raises(MetricError, match="2 references but 1 predictions"):
        rouge_ja(["a", "b"], ["a"])
    with pytest.raises(MetricError):
        rouge_ja([], [])
    with pytest.raises(MetricError):
        rouge_ja(["白"], [3])


def test_strict_japanese_blanks_non_japanese_predictions():
    refs = ["白い犬です", "白い犬です", "The dog"]
    preds = ["白い犬です", "white dog です", "The dog"]
    plain = rouge_ja(refs, preds)
    strict = rouge_ja(refs, preds, strict_japanese=True)
    # pair 2 is mostly Latin -> blanked under strict; pair 3 has an English reference -> kept
    assert strict["rougeL"] < plain["rougeL"]
    expected = rouge_ja(refs, ["白い犬です", "", "The dog"])
    assert strict == expected


def test_bootstrap_is_seeded_and_brackets_the_mean():
    refs, preds = zip(*PAIRS)
    a = rouge_ja(list(refs), list(preds), bootstrap=300, seed=3)
    b = rouge_ja(list(refs), list(preds), bootstrap=300, seed=3)
    c = rouge_ja(list(refs), list(preds), bootstrap=300, seed=4)
    assert a == b
    assert a["rougeL_low"] != c["rougeL_low"] or a["rougeL_high"] != c["rougeL_high"]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert a[f"{name}_low"] <= a[name] <= a[f"{name}_high"]
        assert a[f"{name}_low"] < a[f"{name}_high"]
    with pytest.raises(MetricError):
        bootstrap_interval(np.ones(3), samples=10, confidence=1.5)


def test_reference_tokenized_once():
    scorer = JapaneseRouge()
    calls = []
    original = scorer.tokenize
    scorer.tokenize = lambda text: calls.append(text) or original(text)
    refs = ["白い犬です"] * 5
    scorer.score_pairs(refs, ["白い", "犬", "白い犬", "です", "白い"])
    assert calls.count("白い犬です") == 1
    assert calls.count("白い") == 1


def test_random_japanese_pairs_match_published():
    """Seeded random pairs (repeats, shuffles, long answers) beyond the hand-written ones."""
    words = ("白い 犬 猫 が の に を は です ます 公園 ベンチ 座って いる 赤い 車 2つ ｶﾀｶﾅ "
             "ＡＢＣ dog 🎂 。 、 ！ ー 東京 タワー").split()
    rng = random.Random(1)
    refs, preds = [], []
    for _ in range(150):
        ref = "".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        pred = "".join(rng.choice(words) for _ in range(rng.randint(0, 60)))
        if rng.random() < 0.3:
            pred = ref + pred[:10]
        refs.append(ref)
        preds.append(pred)
    expected = published_per_pair(refs, preds)
    ours = JapaneseRouge().score_pairs(refs, preds)
    for name in expected:
        np.testing.assert_array_equal(ours[name], expected[name])


def test_cache_is_bounded_and_results_unchanged():
    scorer = JapaneseRouge(cache_size=3)
    refs = ["白い犬", "赤い車", "青い空", "黒い猫"]
    preds = ["白い猫", "赤い車です", "空", ""]
    first = scorer.score_pairs(refs, preds)
    assert len(scorer._cache) <= 3
    again = scorer.score_pairs(refs, preds)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
