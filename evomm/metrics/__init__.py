"""Scores that decide which merges survive: Japanese ROUGE (answers) and CLIP (images).

`rouge_ja` is light (MeCab + numpy). The CLIP score needs torch and open_clip, so it lives
in `evomm.metrics.clip_score` and is imported only by those who use it.
"""

from evomm.metrics.language import ScriptLanguageDetector, default_detector
from evomm.metrics.rouge import ROUGE_TYPES, JapaneseRouge, rouge_ja

__all__ = ["ROUGE_TYPES", "JapaneseRouge", "ScriptLanguageDetector", "default_detector", "rouge_ja"]
