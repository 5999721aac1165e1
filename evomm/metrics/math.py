"""Accuracy on math word problems, as Sakana's MGSM-JA evaluation scores it.

The last number in a response is its answer: the last match of `\\d*\\.?\\d+`, read as a float
(so "1,234" reads as 234 and a minus sign is not part of the number, exactly as the published
`extract_answer_number` does). A response is correct when that number equals the reference.
`acc_ja` counts a correct response only when it is Japanese (the published code asks
fastText's lid.176 for P(ja) > 0.5; evomm's default detector is offline, see
`evomm.metrics.language`). Both are percentages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from evomm.metrics.language import LanguageDetector, default_detector

_NUMBER = re.compile(r"\d*\.?\d+")


def extract_answer_number(response: str) -> float | None:
    """The last number in `response` (None when it has none)."""
    matches = _NUMBER.findall(response)
    return float(matches[-1].replace(",", "")) if matches else None


def math_accuracy(references: Sequence[float], responses: Sequence[str],
                  detector: LanguageDetector | None = None) -> dict[str, float]:
    """{"acc", "acc_ja"}: the share of responses whose last number is the reference, x 100;
    `acc_ja` only counts Japanese responses."""
    if len(references) != len(responses):
        raise ValueError(f"{len(references)} references but {len(responses)} responses")
    if not responses:
        return {"acc": 0.0, "acc_ja": 0.0}
    detector = detector or default_detector()
    correct = [extract_answer_number(r) == float(ref) for ref, r in zip(references, responses)]
    japanese = [ok and detector.is_japanese(r) for ok, r in zip(correct, responses)]
    n = len(responses)
    return {"acc": 100.0 * sum(correct) / n, "acc_ja": 100.0 * sum(japanese) / n}
