"""The VLM generation wrapper on tiny LLaVA / LLaVA-NeXT models."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from evomm.errors import ConfigError, EvommError
from evomm.models.vlm import format_question, PROMPT_TEMPLATES, GenerationSettings, VLMGenerator
from testkit.tiny import tiny_llava
from testkit.tiny_processor import save_tiny_vlm, tiny_processor, tiny_tokenizer

IMAGES = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255), (250, 250, 250)]]
QUESTIONS = ["何色？", "この画像について説明してください。", "what is it?"]


def test_tiny_tokenizer_round_trips_japanese_and_places_image_token():
    tok = tiny_tokenizer(132)
    assert len(tok) == 132
    assert tok.convert_tokens_to_ids("<image>") == 131
    ids = tok("白い犬は何色？").input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "白い犬は何色？"
    assert tok.unk_token_id not in ids


@pytest.mark.parametrize("next_version", [False, True])
def test_batched_greedy_equals_one_by_one(next_version):
    model = tiny_llava(seed=1, scale=0.05, next_version=next_version)
    gen = VLMGenerator(model, tiny_processor(next_version=next_version),
                       generation={"max_new_tokens": 6, "batch_size": 3})
    batched = gen.generate(QUESTIONS, IMAGES)
    gen.generation.batch_size = 1
    single = gen.generate(QUESTIONS, IMAGES)
    assert batched == single
    assert len(batched) == 3 and all(isinstance(a, str) for a in batched)
    assert all(a == a.strip() for a in batched)
    assert any(batched)  # a random tiny model still says something


def test_beam_search_runs_and_returns_strings():
    gen = VLMGenerator(tiny_llava(seed=1, scale=0.05), tiny_processor(),
                       generation=GenerationSettings(max_new_tokens=5, num_beams=3, batch_size=2))
    answers = gen.generate(QUESTIONS, IMAGES)
    assert len(answers) == 3 and all(a == a.strip() for a in answers)


def test_templates():
    proc = tiny_processor()
    model = tiny_llava()
    chat = VLMGenerator(model, proc)  # default: the processor's chat template
    assert chat.build_prompt("何色？") == "[INST] <image>\n何色？ [/INST]"
    ja = VLMGenerator(model, proc, template="ja-vqa")
    prompt = ja.build_prompt("何色？")
    assert "与えられた画像を下に、質問に答えてください。" in prompt
    assert prompt.endswith("<image>\n何色？ [/INST]")
    custom = VLMGenerator(model, proc, template="Q: {input} A:")
    assert custom.build_prompt("x") == "Q: <image>\nx A:"
    # a question template (the toy zoo's layout): the image token in place, spaces squeezed
    zoo = VLMGenerator(model, proc, template="USER: {image} {question} ASSISTANT:")
    assert zoo.build_prompt("何色？") == "USER: <image> 何色？ ASSISTANT:"
    assert format_question("USER: {image} {question} ASSISTANT:", "何色？", None) == "USER: 何色？ ASSISTANT:"
    assert set(PROMPT_TEMPLATES) >= {"llava-mistral", "ja-vqa", "plain"}
    with pytest.raises(ConfigError, match="unknown prompt template"):
        VLMGenerator(model, proc, template="nope")
    # a different template changes the prompt, hence (for this model) the answers
    base = VLMGenerator(tiny_llava(seed=1, scale=0.05), proc, template="llava-mistral",
                        generation={"max_new_tokens": 6})
    other = VLMGenerator(base.model, proc, template="ja-vqa", generation={"max_new_tokens": 6})
    assert base.generate(QUESTIONS, IMAGES) != other.generate(QUESTIONS, IMAGES)


def test_weights_set_in_memory_are_used(tmp_path):
    """The evolution engine hands over candidates by changing weights in place."""
    proc = tiny_processor()
    a, b = tiny_llava(seed=1, scale=0.05), tiny_llava(seed=2, scale=0.05)
    gen = VLMGenerator(a, proc, generation={"max_new_tokens": 6})
    answers_a = gen.generate(QUESTIONS, IMAGES)
    answers_b = gen.with_model(b).generate(QUESTIONS, IMAGES)
    assert answers_a != answers_b
    with torch.no_grad():
        a.load_state_dict(b.state_dict())  # "merge" in place
    assert gen.generate(QUESTIONS, IMAGES) == answers_b


@pytest.mark.parametrize("next_version", [False, True])
def test_from_pretrained_matches_in_memory(tmp_path, next_version):
    model = tiny_llava(seed=3, scale=0.05, next_version=next_version)
    path = save_tiny_vlm(model, tmp_path / "vlm", next_version=next_version)
    loaded = VLMGenerator.from_pretrained(path, generation={"max_new_tokens": 6})
    in_memory = VLMGenerator(model, tiny_processor(next_version=next_version),
                             generation={"max_new_tokens": 6})
    assert loaded.generate(QUESTIONS, IMAGES) == in_memory.generate(QUESTIONS, IMAGES)


def test_bad_inputs(tmp_path):
    gen = VLMGenerator(tiny_llava(), tiny_processor(), generation={"max_new_tokens": 2})
    with pytest.raises(EvommError, match="2 questions but 1 images"):
        gen.generate(QUESTIONS[:2], IMAGES[:1])
    with pytest.raises(EvommError, match="cannot load VLM"):
        VLMGenerator.from_pretrained(tmp_path / "absent")
