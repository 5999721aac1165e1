"""Is this answer Japanese? Needed for the strict ROUGE variant.

The published evaluation asks fastText's lid.176 model and treats a text as Japanese when
P(ja) >= 0.5. The model cannot be downloaded here, so the default is an offline detector
that looks at writing systems; when `LID176FTZ_PATH` points at lid.176.ftz/.bin and the
`fasttext` package is importable, the published detector is used instead.

Script rule (ScriptLanguageDetector), on letters only — digits, punctuation, symbols and
spaces do not vote:
- japanese share = (kana + kanji) / (kana + kanji + w * (latin + other letters)), with
  w = `foreign_letter_weight` (default 0.5): an alphabetic letter carries about half of
  what a kana or kanji does (English words average ~4.7 letters, Japanese ones 2-3
  characters), so a brand name inside a Japanese sentence ("これはiPhoneです") does not
  outvote it while an English sentence with one kanji ("The answer is 白") stays English;
- Japanese iff share >= `min_share` (default 0.5, fastText's P(ja) cut-off) and either the
  text has kana, or its Han characters number at most `max_kanji_only` (default 12): short
  kanji-only answers such as "白" or "自転車" are Japanese answers, a long kana-free Han
  passage is far more likely Chinese;
- a text with no letters at all ("2", "!!", "") is not Japanese (`neutral_is_japanese`
  flips that).
"""

from __future__ import annotations

import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

logger = logging.getLogger(__name__)

LID_ENV = "LID176FTZ_PATH"


@runtime_checkable
class LanguageDetector(Protocol):
    def is_japanese(self, text: str) -> bool: ...


@dataclass(frozen=True)
class ScriptCounts:
    kana: int = 0
    kanji: int = 0
    latin: int = 0
    other: int = 0  # letters of any other script (Hangul, Cyrillic, ...)

    @property
    def letters(self) -> int:
        return self.kana + self.kanji + self.latin + self.other

    def japanese_share(self, foreign_letter_weight: float = 0.5) -> float:
        native = self.kana + self.kanji
        weighted = native + foreign_letter_weight * (self.latin + self.other)
        return native / weighted if weighted else 0.0


def _is_kana(cp: int) -> bool:
    return (
        0x3041 <= cp <= 0x309F  # hiragana
        or 0x30A0 <= cp <= 0x30FF  # katakana (incl. ー)
        or 0x31F0 <= cp <= 0x31FF  # katakana phonetic extensions
        or 0xFF66 <= cp <= 0xFF9F  # half-width katakana
    )


def _is_kanji(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0xF900 <= cp <= 0xFAFF
        or 0x20000 <= cp <= 0x2FA1F
        or cp in (0x3005, 0x3006, 0x3007)  # 々 〆 〇
    )


def _is_latin(ch: str, cp: int) -> bool:
    if cp < 0x80:
        return ch.isalpha()
    if 0xFF21 <= cp <= 0xFF5A:  # full-width Latin letters
        return ch.isalpha()
    return ch.isalpha() and "LATIN" in unicodedata.name(ch, "")


def script_counts(text: str) -> ScriptCounts:
    """Count letters by writing system."""
    kana = kanji = latin = other = 0
    for ch in text:
        cp = ord(ch)
        if _is_kana(cp):
            # the prolonged sound mark and middle dot are kana-block punctuation-ish,
            # but they only occur in Japanese, so they count as kana
            kana += 1
        elif _is_kanji(cp):
            kanji += 1
        elif _is_latin(ch, cp):
            latin += 1
        elif ch.isalpha():
            other += 1
    return ScriptCounts(kana, kanji, latin, other)


@dataclass(frozen=True)
class ScriptLanguageDetector:
    """Offline Japanese detector from writing systems (rule in the module docstring)."""

    min_share: float = 0.5
    foreign_letter_weight: float = 0.5
    max_kanji_only: int = 12
    neutral_is_japanese: bool = False

    def japanese_share(self, text: str) -> float:
        return script_counts(text).japanese_share(self.foreign_letter_weight)

    def is_japanese(self, text: str) -> bool:
        counts = script_counts(text)
        if counts.letters == 0:
            return self.neutral_is_japanese
        if counts.japanese_share(self.foreign_letter_weight) < self.min_share:
            return False
        return counts.kana > 0 or counts.kanji <= self.max_kanji_only


class FastTextLanguageDetector:
    """The published detector: fastText lid.176, Japanese iff P(__label__ja) >= threshold."""

    def __init__(self, model_path: str | os.PathLike, threshold: float = 0.5) -> None:
        from fasttext.FastText import _FastText  # quiet constructor (no deprecation print)

        self.model = _FastText(model_path=str(model_path))
        self.threshold = threshold

    def probabilities(self, text: str) -> dict[str, float]:
        labels, probs = self.model.predict(text.replace("\n", ""), k=-1)
        return dict(zip(labels, (float(p) for p in probs)))

    def is_japanese(self, text: str) -> bool:
        return self.probabilities(text).get("__label__ja", 0.0) >= self.threshold


def default_detector() -> LanguageDetector:
    """fastText when `LID176FTZ_PATH` names an existing file and fasttext imports; else the
    script detector (with a warning if the user asked for fastText and cannot have it)."""
    path = os.environ.get(LID_ENV)
    if path:
        if not Path(path).is_file():
            logger.warning("%s=%s does not exist; using the script detector", LID_ENV, path)
        else:
            try:
                return FastTextLanguageDetector(path)
            except ImportError:
                logger.warning("%s is set but fasttext is not installed; using the script "
                               "detector", LID_ENV)
    return ScriptLanguageDetector()
