"""The zoo committed under assets/zoo: intact (sha256), loadable offline, and doing its job."""

import re

import pytest

from evomm.commands.zoo import SHIPPED, check_zoo
from evomm.zoo.evaluate import answer_with_lm, answer_with_vlm, load_split, score_answers

JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def test_shipped_zoo_matches_its_hashes():
    assert check_zoo(SHIPPED) == []


def test_shipped_zoo_is_small():
    weights = sum(p.stat().st_size for p in SHIPPED.rglob("*.safetensors"))
    assert weights <= 12 * 2**20


@pytest.fixture(scope="module")
def vlm():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return (LlavaForConditionalGeneration.from_pretrained(SHIPPED / "english_vlm").eval(),
            AutoProcessor.from_pretrained(SHIPPED / "english_vlm"))


def test_english_vlm_reads_images_in_english(vlm):
    records = load_split(SHIPPED / "data", "test", "en")[:40]
    result = score_answers(records, answer_with_vlm(*vlm, records))
    assert result["keyword_acc"] >= 90.0


def test_japanese_lm_answers_in_japanese_without_seeing_the_image():
    from transformers import AutoTokenizer, MistralForCausalLM

    model = MistralForCausalLM.from_pretrained(SHIPPED / "japanese_lm").eval()
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED / "japanese_lm")
    records = load_split(SHIPPED / "data", "test", "ja")[:20]
    answers = answer_with_lm(model, tokenizer, records)
    assert all(JAPANESE.search(a) for a in answers)


def test_shipped_evolved_vlm_is_rebuilt_exactly_by_evomm_merge(tmp_path, monkeypatch):
    # assets/evovlm_jp: the PS result of the README's main command (seed 0), fp16; its
    # best_recipe.yml names the zoo by paths relative to the repository root
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from evomm.cli import main

    root = Path(__file__).resolve().parents[1]
    shipped = root / "assets" / "evovlm_jp"
    monkeypatch.chdir(root)
    assert main(["merge", str(shipped / "best_recipe.yml"), str(tmp_path / "again"), "--no-progress"]) == 0
    expected = load_file(str(shipped / "model.safetensors"))
    got = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert {t.dtype for t in expected.values()} == {torch.float16}
    assert sum(f.stat().st_size for f in shipped.iterdir()) < 2 * 1024 * 1024
