"""The shipped zoo is mergeable: a per-layer task-arithmetic merge answers Japanese image questions.

Guards the property the toy EvoVLM-JP pipeline relies on (docs/toy_zoo.md, v3): with the
vision tower and projector of the English VLM, the decoder merge
base + a·(VLM − base) + b·(JA − base) found by the probe's per-layer search beats both
parents on key-word accuracy and ROUGE-L, with every question type above chance.
"""

import sys

import pytest

from evomm.zoo import SHIPPED_ZOO
from evomm.zoo import data as D
from evomm.zoo.evaluate import answer_with_lm, answer_with_vlm, load_split, score_answers

sys.path.insert(0, str(SHIPPED_ZOO.parents[0]))
import probe_merges as probe  # noqa: E402

# the probe's greedy per-layer result over [embeddings, layers 0-3, norm + head]
A = [0.5, 0.0, 0.25, 0.25, 0.5, 0.25]
B = [0.5, 1.0, 0.75, 1.0, 1.0, 1.25]


@pytest.mark.slow
def test_per_layer_merge_beats_both_parents_on_every_type():
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration, MistralForCausalLM

    vlm = LlavaForConditionalGeneration.from_pretrained(SHIPPED_ZOO / "english_vlm").eval()
    processor = AutoProcessor.from_pretrained(SHIPPED_ZOO / "english_vlm")
    ja = MistralForCausalLM.from_pretrained(SHIPPED_ZOO / "japanese_lm").eval()
    ja_tokenizer = AutoTokenizer.from_pretrained(SHIPPED_ZOO / "japanese_lm")
    base = MistralForCausalLM.from_pretrained(SHIPPED_ZOO / "base").eval()
    records = load_split(SHIPPED_ZOO / "data", "test", "ja")[:150]

    english = score_answers(records, answer_with_vlm(vlm, processor, records))
    japanese = score_answers(records, answer_with_lm(ja, ja_tokenizer, records))
    states = [probe.decoder_state(m) for m in (base, vlm, ja)]
    probe.load_decoder_into(vlm, probe.task_arithmetic(*states, A, B, base.config.num_hidden_layers))
    merged = score_answers(records, answer_with_vlm(vlm, processor, records))

    for parent in (english, japanese):
        assert merged["keyword_acc"] >= 1.38 * parent["keyword_acc"]
        assert merged["rougeL"] > parent["rougeL"]
    for qtype, accuracy in merged["by_type"].items():
        assert accuracy > D.chance_level(qtype) + 20, (qtype, accuracy)
