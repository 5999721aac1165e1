"""A shrunken zoo builds in seconds, loads through the public HF classes and generates."""

import json

import pytest
import torch

from evomm.commands import zoo as zoo_command
from evomm.zoo.build import ZooConfig, build_zoo
from evomm.zoo.evaluate import answer_with_lm, answer_with_vlm, load_split, score_answers
from evomm.zoo.train import Example, encode


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "small"
    return build_zoo(out, ZooConfig.small(seed=1), log=lambda *_: None)


def test_small_zoo_loads_offline_and_generates(small_zoo):
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration, MistralForCausalLM

    vlm = LlavaForConditionalGeneration.from_pretrained(small_zoo / "english_vlm")
    processor = AutoProcessor.from_pretrained(small_zoo / "english_vlm")
    records = load_split(small_zoo / "data", "test", "ja")[:3]
    answers = answer_with_vlm(vlm, processor, records, max_new_tokens=4)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    result = score_answers(records, answers)
    assert 0.0 <= result["keyword_acc"] <= 100.0
    for name in ("base", "japanese_lm"):
        lm = MistralForCausalLM.from_pretrained(small_zoo / name)
        tokenizer = AutoTokenizer.from_pretrained(small_zoo / name)
        assert len(answer_with_lm(lm, tokenizer, records, max_new_tokens=3)) == 3
    # the three decoders share one architecture (so their weights can be merged)
    base = MistralForCausalLM.from_pretrained(small_zoo / "base").state_dict()
    vlm_lm = vlm.model.language_model.state_dict()
    assert all(vlm_lm[k[len("model."):]].shape == v.shape for k, v in base.items() if k.startswith("model."))
    assert vlm.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")


def test_fine_tunes_moved_away_from_the_shared_base(small_zoo):
    from transformers import MistralForCausalLM

    base = MistralForCausalLM.from_pretrained(small_zoo / "base").state_dict()
    ja = MistralForCausalLM.from_pretrained(small_zoo / "japanese_lm").state_dict()
    assert any(not torch.equal(base[k], ja[k]) for k in base)


def test_build_is_reproducible_from_its_seed(small_zoo, tmp_path):
    again = build_zoo(tmp_path / "again", ZooConfig.small(seed=1), log=lambda *_: None)
    first = json.loads((small_zoo / "hashes.json").read_text())
    second = json.loads((again / "hashes.json").read_text())
    weights = [k for k in first if k.endswith(".safetensors") or k.endswith(".jsonl")]
    assert weights and all(first[k] == second[k] for k in weights)


def test_check_reports_tampering(small_zoo, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_zoo, copy)
    assert zoo_command.check_zoo(copy) == []
    weights = copy / "japanese_lm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert zoo_command.check_zoo(copy) == ["changed: japanese_lm/model.safetensors"]


def test_prompt_tokens_are_a_prefix_of_the_training_sequence(small_zoo):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_zoo / "base")
    example = Example("USER: 白い背景に赤い円。 図形は何色ですか？ ASSISTANT:", "赤です。")
    ids, labels, _ = encode(tokenizer, [example])
    prompt_ids = tokenizer(example.prompt).input_ids
    assert ids[0, : len(prompt_ids)].tolist() == prompt_ids
    assert tokenizer.decode(ids[0][labels[0] != -100], skip_special_tokens=True).strip() == "赤です。"


def test_cli_refuses_small_build_over_the_shipped_zoo_and_bad_zoo_dirs(tmp_path, capsys):
    from evomm.cli import main

    assert main(["zoo", "build", "--small"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["zoo", "check", "--zoo", str(tmp_path)]) == 2
    assert "hashes.json" in capsys.readouterr().err
