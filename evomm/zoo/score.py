"""Key-word accuracy: does an answer name the right content?

ROUGE-L on Japanese sentences is dominated by the sentence frame (です, あります, ...), so a
model that answers fluently but about the wrong colour still scores well. This measure only
asks whether the asked value (a colour, a shape, a position, a count) is named — and, when
distractors are given, that no competing value of the same attribute is named too, so that
listing every colour does not count as knowing the right one.
"""

from __future__ import annotations

from collections.abc import Sequence

from evomm.errors import MetricError


def answer_names(prediction: str, keywords: Sequence[str], distractors: Sequence[str] = ()) -> bool:
    """True when `prediction` contains every key word and none of the distractors."""
    text = prediction.lower()
    if not all(k.lower() in text for k in keywords):
        return False
    return not any(d.lower() in text for d in distractors)


def keyword_accuracy(
    predictions: Sequence[str],
    keyword_lists: Sequence[Sequence[str]],
    distractor_lists: Sequence[Sequence[str]] | None = None,
) -> float:
    """Percentage (0-100) of predictions that name their key words (and no distractor)."""
    if len(predictions) != len(keyword_lists):
        raise MetricError(
            f"keyword_accuracy: {len(predictions)} predictions but {len(keyword_lists)} keyword lists"
        )
    if distractor_lists is not None and len(distractor_lists) != len(predictions):
        raise MetricError("keyword_accuracy: distractor_lists must match predictions in length")
    if not predictions:
        raise MetricError("keyword_accuracy: no predictions to score")
    distractors = distractor_lists if distractor_lists is not None else [()] * len(predictions)
    hits = sum(answer_names(p, k, d) for p, k, d in zip(predictions, keyword_lists, distractors))
    return 100.0 * hits / len(predictions)
