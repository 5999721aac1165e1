"""The paper-protocol eval presets: Sakana's EvoVLM-JP evaluation settings, end to end.

Sakana's published evaluation (SakanaAI/evolutionary-model-merge, configs/vlm/) used beam
search (5 beams), repetition_penalty 1.5, 512 new tokens, the `ja-shisa-vqa` prompt for every
model, and loaded the LLaVA-NeXT checkpoint as `LlavaForConditionalGeneration` (one crop, no
`image_newline`). Here: the presets say exactly that, `single_crop` really gives one crop
with the checkpoint's weights, and the settings reach `generate`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from evomm.errors import ConfigError
from evomm.evaluation import EvalConfig, build_generator, load_config, run_evaluation
from evomm.models.vlm import (
    PROMPT_TEMPLATES,
    VLMGenerator,
    check_image_mode,
    load_single_crop,
    single_crop_processor,
    with_image_mode,
)
from testkit.tiny import tiny_llava
from testkit.tiny_processor import EVAL_FIXTURE_ROOT, save_eval_fixture_models, save_tiny_vlm, tiny_processor
from miniatures import _llava_hf_name, llava_next_mistral

REPO = Path(__file__).parents[1]
CONFIGS = REPO / "eval" / "configs"
PAPER = {"ja_vg_vqa_500_paper.yaml": ("ja_vg_vqa_500.yaml", "ja-vg-vqa-500", "19.70"),
         "ja_vlm_bench_in_the_wild_paper.yaml": ("ja_vlm_bench_in_the_wild.yaml",
                                                 "ja-vlm-bench-in-the-wild", "51.25")}
PAPER_GENERATION = {"max_new_tokens": 512, "num_beams": 5, "repetition_penalty": 1.5,
                    "batch_size": 4, "length_penalty": None}
# JA_SHISA_VQA in SakanaAI/evolutionary-model-merge, evomerge/models/prompt_templates.py
SAKANA_JA_SHISA_VQA = ("[INST] <<SYS>>\nあなたは役立つ、偏見がなく、検閲されていないアシスタントです。"
                       "与えられた画像を下に、質問に答えてください。\n<</SYS>>\n\n{input} [/INST]")
TINY_FEATURES = (32 // 8) ** 2  # tiny CLIP tower: 32-pixel images, 8-pixel patches, CLS dropped
IMAGES = [Image.new("RGB", (40, 72), (255, 0, 0)), Image.new("RGB", (64, 32), (0, 0, 255)),
          Image.new("RGB", (32, 32), (250, 250, 250))]
QUESTIONS = ["何色？", "この画像について説明してください。", "何？"]


def _projector_outputs(model) -> list[tuple[int, ...]]:
    """Record the shape of every projector output: (crops, features per crop, hidden)."""
    shapes: list[tuple[int, ...]] = []
    model.model.multi_modal_projector.register_forward_hook(
        lambda _m, _i, out: shapes.append(tuple(out.shape)))
    return shapes


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_presets_carry_the_paper_protocol(preset):
    fast_name, kind, published = PAPER[preset]
    config, fast = load_config(CONFIGS / preset), load_config(CONFIGS / fast_name)
    assert config.generation.model_dump() == PAPER_GENERATION
    assert [b.kind for b in config.benchmarks] == [kind]
    assert [(m.name, m.path) for m in config.models] == [
        ("LLaVA-1.6-Mistral-7B", "llava-hf/llava-v1.6-mistral-7b-hf"),
        ("EvoVLM-JP-v1-7B", "SakanaAI/EvoVLM-JP-v1-7B")]
    for model in config.models:
        assert (model.template, model.image_mode, model.dtype) == ("ja-shisa-vqa", "single_crop", "float16")
    # the same benchmark and models as the fast default; only the protocol differs
    assert [b.model_dump() for b in config.benchmarks] == [b.model_dump() for b in fast.benchmarks]
    assert [(m.name, m.path) for m in fast.models] == [(m.name, m.path) for m in config.models]
    assert fast.generation.num_beams == 1 and fast.generation.repetition_penalty is None
    assert all(m.image_mode is None for m in fast.models)
    header = (CONFIGS / preset).read_text(encoding="utf-8").split("\nname:")[0]
    assert published in header and fast_name in header and "single_crop" in header
    assert PROMPT_TEMPLATES["ja-shisa-vqa"] == SAKANA_JA_SHISA_VQA


def test_single_crop_loads_the_llava_next_miniature_weights(tmp_path):
    """llava-hf's on-disk names, sharded bfloat16: every tensor but image_newline lands as is."""
    path = llava_next_mistral(tmp_path / "llava-v1.6-mistral-7b-hf")
    model = load_single_crop(path, dtype="bfloat16")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    disk = {}
    for shard in sorted(path.glob("*.safetensors")):
        disk.update(load_file(str(shard)))
    state = model.state_dict()
    assert {_llava_hf_name(n) for n in state} == set(disk) - {"image_newline"}
    for name, value in state.items():
        assert torch.equal(value, disk[_llava_hf_name(name)]), name
    assert model.config.text_config.num_hidden_layers == 32
    assert model.config.image_seq_length == TINY_FEATURES
    # one crop in, (image_size / patch)^2 features out, whatever the NeXT grid would have made
    pixels = torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)
    shapes = _projector_outputs(model)
    with torch.no_grad():
        model.model.get_image_features(pixel_values=pixels)
    assert shapes == [(2, TINY_FEATURES, 32)]


def test_single_crop_answers_come_from_one_crop(tmp_path):
    next_model = tiny_llava(seed=3, scale=0.05, next_version=True)
    path = save_tiny_vlm(next_model, tmp_path / "tiny-next", next_version=True)
    generation = {"max_new_tokens": 6, "num_beams": 5, "repetition_penalty": 1.5, "batch_size": 2}
    single = VLMGenerator.from_pretrained(path, template="ja-shisa-vqa", generation=generation,
                                          image_mode="single_crop")
    assert type(single.model).__name__ == "LlavaForConditionalGeneration"
    assert type(single.processor).__name__ == "LlavaProcessor"
    # the checkpoint's weights, image_newline dropped
    expected = {k: v for k, v in next_model.state_dict().items() if k != "model.image_newline"}
    state = single.model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)

    shapes = _projector_outputs(single.model)
    answers = single.generate(QUESTIONS, IMAGES)
    assert len(answers) == 3 and all(answers)
    # every image: one crop of (image_size / patch)^2 features, and as many <image> tokens
    assert {s[1:] for s in shapes} == {(TINY_FEATURES, 32)} and sum(s[0] for s in shapes) == 3
    inputs = single.processor(text=[single.build_prompt(q) for q in QUESTIONS], images=IMAGES,
                              padding=True, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (3, 3, 32, 32)
    image_token = single.model.config.image_token_index
    assert (inputs["input_ids"] == image_token).sum(dim=1).tolist() == [TINY_FEATURES] * 3

    # the same answers as a LLaVA built independently from those weights with a one-crop processor
    reference = tiny_llava(seed=3, scale=0.05)  # same config, then the NeXT weights loaded in
    reference.load_state_dict(expected, strict=True)
    assert VLMGenerator(reference, tiny_processor(), template="ja-shisa-vqa",
                        generation=generation).generate(QUESTIONS, IMAGES) == answers

    # while tiling (the default, or asked for) inserts more features than one crop
    tiled = VLMGenerator.from_pretrained(path, template="ja-shisa-vqa", generation=generation,
                                         image_mode="tiling")
    assert type(tiled.model).__name__ == "LlavaNextForConditionalGeneration"
    tiled_inputs = tiled.processor(text=[tiled.build_prompt(q) for q in QUESTIONS], images=IMAGES,
                                   padding=True, return_tensors="pt")
    counts = (tiled_inputs["input_ids"] == image_token).sum(dim=1)
    assert (counts > TINY_FEATURES).all()
    assert tiled.generate(QUESTIONS, IMAGES) != answers


def test_single_crop_processor_ignores_the_grid():
    processor = single_crop_processor(tiny_processor(next_version=True),
                                      with_image_mode(tiny_llava(next_version=True),
                                                      tiny_processor(next_version=True),
                                                      "single_crop")[0].config)
    inputs = processor(text=["<image>\nx"] * 3, images=IMAGES, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (3, 3, 32, 32) and "image_sizes" not in inputs
    assert (inputs["input_ids"] == 131).sum().item() == 3 * TINY_FEATURES


def test_generation_settings_reach_generate(tmp_path):
    paper = load_config(CONFIGS / "ja_vg_vqa_500_paper.yaml")
    saved = save_tiny_vlm(tiny_llava(seed=2, scale=0.05, next_version=True), tmp_path / "tiny-next",
                          next_version=True)
    config = EvalConfig.model_validate({
        "benchmarks": [{"kind": "jsonl", "path": "unused"}],
        "models": [{"name": "tiny-next", "path": str(saved),
                    "template": "ja-shisa-vqa", "image_mode": "single_crop"}],
        "generation": paper.generation.model_dump(),
    })
    generator = build_generator(config.models[0], config, None)
    assert type(generator.model).__name__ == "LlavaForConditionalGeneration"
    calls = []

    def fake_generate(**kwargs):
        calls.append(kwargs)
        ids = kwargs["input_ids"]
        return torch.cat([ids, torch.full((ids.shape[0], 1), 2)], dim=1)

    generator.model.generate = fake_generate
    assert generator.generate(QUESTIONS, IMAGES) == ["", "", ""]
    assert [len(c["input_ids"]) for c in calls] == [3]  # batch_size 4
    call = calls[0]
    assert (call["num_beams"], call["repetition_penalty"], call["max_new_tokens"]) == (5, 1.5, 512)
    assert call["do_sample"] is False and "length_penalty" not in call
    assert tuple(call["pixel_values"].shape) == (3, 3, 32, 32)


def test_fixture_benchmarks_run_with_the_paper_settings(tmp_path, monkeypatch):
    """eval/configs/fixture.yaml with the paper preset's protocol (fewer new tokens: a random
    tiny model seldom stops): its tiny LLaVA and tiny LLaVA-NeXT, and one more LLaVA-NeXT."""
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    paper = load_config(CONFIGS / "ja_vg_vqa_500_paper.yaml")
    raw = yaml.safe_load((CONFIGS / "fixture.yaml").read_text(encoding="utf-8"))
    # the shipped config reads what `python -m testkit.tiny_processor` writes; here, in tmp_path
    fixture_models = save_eval_fixture_models(tmp_path / "fixture_models")
    for model in raw["models"]:
        assert (CONFIGS / model["path"]).resolve() == EVAL_FIXTURE_ROOT / model["name"]
        model["path"] = str(fixture_models[model["name"]])
    saved = save_tiny_vlm(tiny_llava(seed=5, scale=0.05, next_version=True), tmp_path / "next",
                          next_version=True)
    raw["models"].append({"name": "tiny-llava-next-saved", "path": str(saved)})
    for model in raw["models"]:
        model.update(template=paper.models[0].template, image_mode=paper.models[0].image_mode)
    raw["generation"] = paper.generation.model_dump() | {"max_new_tokens": 12}
    config = EvalConfig.model_validate(raw)

    calls = []
    original = LlavaForConditionalGeneration.generate

    def spy(self, *args, **kwargs):
        calls.append((type(self).__name__, kwargs["num_beams"], kwargs["repetition_penalty"],
                      kwargs["max_new_tokens"], tuple(kwargs["pixel_values"].shape[1:])))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlavaForConditionalGeneration, "generate", spy)
    monkeypatch.setattr(LlavaNextForConditionalGeneration, "generate",
                        lambda *a, **k: pytest.fail("a tiled model ran"))
    out = tmp_path / "out"
    report = run_evaluation(config, out_dir=out, config_dir=CONFIGS, log=lambda _m: None)

    names = ["tiny-llava-a", "tiny-llava-next-b", "tiny-llava-next-saved"]
    assert list(report.results) == names
    # 6 + 4 + 3 questions in batches of 4: 2 + 1 + 1 generate calls per model
    assert len(calls) == 3 * 4
    assert set(calls) == {("LlavaForConditionalGeneration", 5, 1.5, 12, (3, 32, 32))}
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["config"]["generation"]["repetition_penalty"] == 1.5
    assert {m["image_mode"] for m in results["config"]["models"]} == {"single_crop"}
    for model in names:
        for bench in report.benchmarks:
            result = report.results[model][bench]
            assert 0.0 <= result.metrics["rougeL"] <= 100.0
            assert all(isinstance(r["prediction"], str) for r in result.records)
        assert any(r["prediction"] for r in report.results[model]["JA-VG-VQA-500"].records)


def test_image_mode_errors(tmp_path):
    raw = yaml.safe_load((CONFIGS / "fixture.yaml").read_text(encoding="utf-8"))
    bad = copy.deepcopy(raw)
    bad["models"][0]["image_mode"] = "tiles"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"models\.0\.image_mode.*'tiling' or 'single_crop'"):
        load_config(path)
    bad = copy.deepcopy(raw)
    bad["generation"]["repetition_penalty"] = 0
    path.write_text(yaml.safe_dump(bad, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="generation.repetition_penalty"):
        load_config(path)
    # tiling needs a LLaVA-NeXT checkpoint
    plain = save_tiny_vlm(tiny_llava(seed=1), tmp_path / "plain")
    config = EvalConfig.model_validate(raw | {"models": [
        {"name": "plain", "path": str(plain), "image_mode": "tiling"}]})
    with pytest.raises(ConfigError, match="plain: image_mode 'tiling' needs a LLaVA-NeXT"):
        build_generator(config.models[0], config, None)
    with pytest.raises(ConfigError, match="'tiling' needs a LLaVA-NeXT checkpoint"):
        VLMGenerator.from_pretrained(plain, image_mode="tiling")
    with pytest.raises(ConfigError, match="single-crop loading needs a LLaVA-NeXT"):
        load_single_crop(plain)
    # single_crop on a plain LLaVA is what it already is: one crop
    assert type(VLMGenerator.from_pretrained(plain, image_mode="single_crop").model).__name__ \
        == "LlavaForConditionalGeneration"
    with pytest.raises(ConfigError, match="not model_type 'mistral'"):
        check_image_mode("single_crop", "mistral")
    with pytest.raises(ConfigError, match="image_mode must be one of"):
        VLMGenerator.from_pretrained(plain, image_mode="crop")
