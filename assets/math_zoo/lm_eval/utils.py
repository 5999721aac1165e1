"""Helpers of the toy math lm-eval tasks: the zoo's JSONL splits, scored as evomm scores them.

`process_results` calls `evomm.metrics.math.math_accuracy`, the function behind evomm's own
`math_accuracy_ja` fitness, on the same answer text (cut at the same stop strings), so the two
give the same number. Per-document values are 0 or 100: the task's mean is a percentage.
"""

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"


def load_split(split="test", **_metadata):
    """{split: Dataset} from ../data/{split}.jsonl (no network, no dataset script)."""
    import datasets

    with open(DATA / f"{split}.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {split: datasets.Dataset.from_list(rows)}


def process_results(doc, results):
    from evomm.metrics.math import math_accuracy
    from evomm.models.textgen import STOP_STRINGS, cut_at_stop

    scores = math_accuracy([doc["answer_number"]], [cut_at_stop(results[0], STOP_STRINGS)])
    return {"acc": scores["acc"], "acc_ja": scores["acc_ja"]}
