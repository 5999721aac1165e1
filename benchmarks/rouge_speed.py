"""rouge_ja against the straightforward published-style code, on the same pairs in one run.

Baseline = what the EvoVLM-JP evaluation does on every call: build a MeCab tokenizer and a
RougeScorer, then `scorer.score(ref, pred)` pair by pair (each call re-normalises and
re-tokenizes both texts and fills an O(m*n) LCS table in Python), aggregated with
rouge_score's BootstrapAggregator; we compare per-type means. Japanese-ish pairs are
generated from a seeded word list (exact copies, shuffled paraphrases, empty answers and
long rambling predictions like those of a half-merged model) in two regimes shaped like the
two benchmarks, and their mix.

Where the time goes: both sides pay neologdn and MeCab (C code, ~0.5 us per character each);
the published path adds a per-character emoji test and an O(m*n) Python LCS table, which is
what rouge_ja removes. The speed-up therefore grows with answer length.

    python benchmarks/rouge_speed.py [--pairs 2000] [--seed 0] [--repeat 3] [--regime all]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evomm.metrics.rouge import JapaneseRouge, rouge_ja  # noqa: E402

WORDS = (
    "白い 黒い 赤い 青い 犬 猫 男性 女性 子供 自転車 車 電車 テーブル 椅子 公園 空 海 山 "
    "写真 画像 東京 京都 りんご ケーキ 新聞 ベンチ 木 花 建物 窓 道路 信号 帽子 シャツ "
    "が の に を は で と も です ます いる ある 座って 走って 読んで 見えます 写っています "
    "大きな 小さな 2つ 3人 10時 ｶﾀｶﾅ ＡＢＣ dog white 🎂 😀 。 、 ！"
).split()


def make_pairs(n: int, seed: int, regime: str = "mixed") -> tuple[list[str], list[str]]:
    """`short`: JA-VG-VQA-like (1-6 word references); `long`: JA-VLM-Bench-In-the-Wild-like
    (sentence references, 30-200 word answers); `mixed`: half of each."""
    rng = random.Random(seed)

    def sentence(lo: int, hi: int) -> str:
        return "".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    refs, preds = [], []
    for i in range(n):
        short = regime == "short" or (regime == "mixed" and i % 2 == 0)
        ref = sentence(1, 6) if short else sentence(15, 60)
        kind = rng.random()
        if kind < 0.1:
            pred = ""
        elif kind < 0.3:
            pred = ref
        elif kind < 0.6:
            words = list(ref)
            rng.shuffle(words)
            pred = "".join(words[: max(1, len(words) * 3 // 4)]) + sentence(0, 5)
        else:
            pred = sentence(10, 60) if short else sentence(30, 200)  # rambling answer
        refs.append(ref)
        preds.append(pred)
    return refs, preds


def published_style(refs: list[str], preds: list[str]) -> dict[str, float]:
    """The published code path: new tagger + scorer per call, score per pair, aggregate."""
    import emoji
    import neologdn
    from fugashi import Tagger
    from rouge_score import rouge_scorer, scoring

    class MecabTokenizer:
        def __init__(self) -> None:
            self.tagger = Tagger("-Owakati")

        def normalize(self, text: str) -> str:
            text = "".join("" if emoji.is_emoji(c) else c for c in text)
            pattern = re.compile(
                "[\U0001F600-\U0001F64F\U0001F300-\U0001F5FF\U0001F680-\U0001F6FF"
                "\U0001F1E0-\U0001F1FF\U00002702-\U000027B0]+",
                flags=re.UNICODE,
            )
            text = neologdn.normalize(pattern.sub("", text))
            return " ".join(text.split())

        def tokenize(self, text: str) -> list[str]:
            return self.tagger.parse(self.normalize(text)).split()

    types = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(types, tokenizer=MecabTokenizer())
    aggregator = scoring.BootstrapAggregator()
    per_pair = {t: [] for t in types}
    for ref, pred in zip(refs, preds):
        score = scorer.score(ref, pred)
        aggregator.add_scores(score)
        for t in types:
            per_pair[t].append(score[t].fmeasure)
    aggregator.aggregate()  # the published code pays for this on every call
    return {t: float(np.mean(per_pair[t])) * 100 for t in types}


def run_regime(regime: str, n: int, seed: int, repeat: int) -> bool:
    refs, preds = make_pairs(n, seed, regime)
    tokens = JapaneseRouge()
    ref_len = np.mean([len(tokens.tokenize(r)) for r in refs])
    pred_len = np.mean([len(tokens.tokenize(p)) for p in preds])
    print(f"\n[{regime}] {n} pairs, mean MeCab tokens: reference {ref_len:.1f}, "
          f"prediction {pred_len:.1f}")

    def best_of(fn) -> tuple[float, dict]:
        best, result = float("inf"), None
        for _ in range(repeat):
            start = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - start)
        return best, result

    t_base, base = best_of(lambda: published_style(refs, preds))
    # cold: a fresh scorer (new tagger, empty cache) -- what a one-off evaluation pays
    t_cold, ours = best_of(lambda: rouge_ja(refs, preds, scorer=JapaneseRouge()))
    # warm: the evolution loop's case -- references tokenized by an earlier generation,
    # predictions new (a fresh scorer per repetition so predictions are never cached)
    t_warm, ours_warm = float("inf"), None
    for _ in range(repeat):
        warm_scorer = JapaneseRouge()
        rouge_ja(refs, [""] * len(refs), scorer=warm_scorer)
        start = time.perf_counter()
        ours_warm = rouge_ja(refs, preds, scorer=warm_scorer)
        t_warm = min(t_warm, time.perf_counter() - start)

    print(f"  published-style        : {t_base:7.3f} s")
    print(f"  rouge_ja (cold)        : {t_cold:7.3f} s   speed-up {t_base / t_cold:5.1f}x")
    print(f"  rouge_ja (refs cached) : {t_warm:7.3f} s   speed-up {t_base / t_warm:5.1f}x")
    same = all(base[k] == ours[k] for k in base)
    close = all(abs(base[k] - ours[k]) < 1e-9 for k in base)
    for k in base:
        print(f"  {k:7s} published {base[k]:.12f}  rouge_ja {ours[k]:.12f}")
    print(f"  means identical: {same} (within 1e-9: {close}); refs-cached run identical: "
          f"{ours_warm == ours}")
    return close and ours_warm == ours


def run_fitness_loop(n: int, seed: int, repeat: int, batch: int = 100) -> bool:
    """The evolution loop: the same `batch` references scored once per candidate, every
    candidate's answers new (none repeat, the conservative case). The published code pays a
    new tagger, scorer and 1000-sample bootstrap per call; rouge_ja keeps its tagger and
    reference tokens."""
    calls = n // batch
    refs, _ = make_pairs(batch, seed, "mixed")
    candidates = [make_pairs(batch, seed + 1 + c, "mixed")[1] for c in range(calls)]
    print(f"\n[fitness] {calls} calls x {batch} pairs = {calls * batch} pairs, same references, "
          "new predictions each call")

    def published_loop():
        return [published_style(refs, preds) for preds in candidates]

    def ours_loop():
        scorer = JapaneseRouge()
        return [rouge_ja(refs, preds, scorer=scorer) for preds in candidates]

    t_base = t_ours = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        base = published_loop()
        t_base = min(t_base, time.perf_counter() - start)
        start = time.perf_counter()
        ours = ours_loop()
        t_ours = min(t_ours, time.perf_counter() - start)
    close = all(abs(b[k] - o[k]) < 1e-9 for b, o in zip(base, ours) for k in b)
    print(f"  published-style        : {t_base:7.3f} s")
    print(f"  rouge_ja (one scorer)  : {t_ours:7.3f} s   speed-up {t_base / t_ours:5.1f}x")
    print(f"  all {calls} per-call means agree within 1e-9: {close}")
    return close


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per side (best is kept)")
    parser.add_argument(
        "--regime", choices=["mixed", "short", "long", "fitness", "all"], default="all"
    )
    args = parser.parse_args()
    published_style(["白"], ["白"])  # import rouge_score/nltk before timing anything
    regimes = ["short", "long", "mixed", "fitness"] if args.regime == "all" else [args.regime]
    ok = [
        run_fitness_loop(args.pairs, args.seed, args.repeat)
        if r == "fitness"
        else run_regime(r, args.pairs, args.seed, args.repeat)
        for r in regimes
    ]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
