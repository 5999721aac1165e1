"""`evomm convert jsdxl`: a miniature of the published JSDXL repo -> a plain SDXL pipeline folder.

The miniature has the real repo's layout (see docs/jsdxl.md for sources): `model_index.json`
naming `JapaneseStableDiffusionXLPipeline` from `pipeline_japanese_stable_diffusion_xl.py`, one
text encoder (`CLIPTextModelWithProjection`) with a sentencepiece tokenizer, an SDXL UNet whose
cross-attention width is text width + the null encoder's width, fp16-variant weight files only,
and the two remote-code files, here stubs that raise if anything ever imports them.
The tokenizer class of the real repo is not known from public sources; `T5Tokenizer` stands in.
"""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from evomm.cli import main
from evomm.errors import CheckpointError, ConfigError, OutputExistsError
from evomm.models.jsdxl import convert_jsdxl, inspect_jsdxl
from evomm.zoo_sdxl import models

spm = pytest.importorskip("sentencepiece")

NULL_WIDTH = 16  # 1280 in the real repo
TEXT_WIDTH = 8  # 768 in the real repo
MAX_LEN = 8  # 77 in the real repo
PROMPTS = ["柴犬、カラフルアート", "青い三角形"]
CORPUS = ["柴犬、カラフルアート", "赤い円が黒い背景の上にある", "青い三角形", "富士山と桜の風景",
          "猫が窓辺で眠っている"]
REMOTE_CODE_STUB = 'raise RuntimeError("remote code was executed")\n'


def _tokenizer_dir(folder):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 4), model_writer=buf, vocab_size=64,
                                   model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    folder.mkdir(parents=True)
    (folder / "spiece.model").write_bytes(buf.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "model_max_length": MAX_LEN, "extra_ids": 0,
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, use_fast=False)


def build_miniature(root):
    """A tiny stand-in for a local copy of stabilityai/japanese-stable-diffusion-xl."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tok = _tokenizer_dir(root / "tokenizer")
    torch.manual_seed(0)
    te = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=TEXT_WIDTH, intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_LEN, projection_dim=TEXT_WIDTH,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.pad_token_id))
    te.half().save_pretrained(root / "text_encoder", variant="fp16")
    unet = UNet2DConditionModel(**{**models.unet_config(models.SMALL),
                                   "cross_attention_dim": TEXT_WIDTH + NULL_WIDTH,
                                   "projection_class_embeddings_input_dim": NULL_WIDTH + 6 * 8})
    unet.half().save_pretrained(root / "unet", variant="fp16")
    models.build_vae(models.SMALL, 0, scaling_factor=0.5).half().save_pretrained(root / "vae", variant="fp16")
    models.scheduler().save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": ["pipeline_japanese_stable_diffusion_xl", "JapaneseStableDiffusionXLPipeline"],
        "_diffusers_version": "0.23.0",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    (root / "pipeline_japanese_stable_diffusion_xl.py").write_text(REMOTE_CODE_STUB)
    (root / "modeling_clipnull.py").write_text(REMOTE_CODE_STUB)
    (root / "LICENSE").write_text("STABILITY AI JAPANESE STABLE DIFFUSION XL COMMUNITY LICENSE (stand-in)\n")
    (root / "README.md").write_text("# JSDXL (miniature)\n")
    return root


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("jsdxl")
    src = build_miniature(base / "japanese-stable-diffusion-xl")
    out = base / "jsdxl-diffusers"
    note = convert_jsdxl(src, out)
    return src, out, note


def _jsdxl_encode(src, prompts):
    """JapaneseStableDiffusionXLPipeline.encode_prompt, restated from its published source:
    hidden_states[-2] of the one text encoder ++ zeros of the null width; pooled = zeros."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    tok = AutoTokenizer.from_pretrained(src / "tokenizer", use_fast=False)
    te = CLIPTextModelWithProjection.from_pretrained(src / "text_encoder", variant="fp16", dtype=torch.float32)
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = te(ids, output_hidden_states=True).hidden_states[-2]
    zeros = torch.zeros(hidden.shape[0], hidden.shape[1], NULL_WIDTH)
    return torch.cat([hidden, zeros], dim=-1), torch.zeros(hidden.shape[0], NULL_WIDTH)


def test_layout_is_recognised(converted):
    src, out, note = converted
    layout = inspect_jsdxl(src)
    assert (layout.text_width, layout.null_width) == (TEXT_WIDTH, NULL_WIDTH)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == index["tokenizer_2"] == ["transformers", "T5Tokenizer"]
    assert not list(out.rglob("*.py")) and not list(out.rglob("*.bin"))
    assert (out / "LICENSE").is_file() and (out / "evomm_conversion.json").is_file()
    assert "pipeline_japanese_stable_diffusion_xl.py" in note["not_copied"]
    assert note["dropped_tensors"] == {"text_encoder/model.fp16.safetensors": ["text_projection.weight"]}
    # variants mirrored: fp16 files only, like the source
    assert sorted(p.name for p in (out / "text_encoder_2").iterdir()) == ["config.json", "model.fp16.safetensors"]


def test_weights_are_the_source_weights(converted):
    src, out, _ = converted
    for part in ("unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
                 "tokenizer/spiece.model", "tokenizer_2/spiece.model", "scheduler/scheduler_config.json"):
        original = src / part.replace("tokenizer_2", "tokenizer")
        assert (out / part).read_bytes() == original.read_bytes()
    before = load_file(str(src / "text_encoder" / "model.fp16.safetensors"))
    after = load_file(str(out / "text_encoder" / "model.fp16.safetensors"))
    assert set(before) - set(after) == {"text_projection.weight"}
    for name, tensor in after.items():
        assert torch.equal(tensor, before[name]) and tensor.dtype == torch.float16
    null = load_file(str(out / "text_encoder_2" / "model.fp16.safetensors"))
    assert all(t.dtype == torch.float16 and not t.any() for t in null.values())


def test_loads_without_remote_code_and_conditions_like_jsdxl(converted):
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

    from evomm.models.sdxl import load_pipeline

    src, out, _ = converted
    pipe = load_pipeline(out)  # evomm's loader: picks the fp16 variant, no remote code
    assert type(pipe) is StableDiffusionXLPipeline
    plain = DiffusionPipeline.from_pretrained(out, local_files_only=True, variant="fp16")
    assert type(plain) is StableDiffusionXLPipeline
    embeds, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True,
                                                         negative_prompt=["猫", "桜"])
    want, want_pooled = _jsdxl_encode(src, PROMPTS)
    want_neg, want_neg_pooled = _jsdxl_encode(src, ["猫", "桜"])
    torch.testing.assert_close(embeds, want, rtol=0, atol=0)
    torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=0)
    torch.testing.assert_close(neg, want_neg, rtol=0, atol=0)
    torch.testing.assert_close(neg_pooled, want_neg_pooled, rtol=0, atol=0)
    # no negative prompt: all zeros, as force_zeros_for_empty_prompt asks
    _, neg0, _, neg0_pooled = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
    assert not neg0.any() and not neg0_pooled.any()
    image = pipe(PROMPTS[0], num_inference_steps=1, guidance_scale=0.0, output_type="pt").images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_unet_opens_as_an_evomm_source(converted):
    from evomm.io import open_source

    src, out, _ = converted
    before, after = open_source(src / "unet"), open_source(out)
    assert after.layout == "diffusers" and set(after.keys()) == set(before.keys())
    for name in list(before.keys())[:20]:
        assert torch.equal(after.get(name), before.get(name))


def test_cli_converts_and_refuses_in_one_line(converted, tmp_path, capsys):
    src, _, _ = converted
    assert main(["convert", "jsdxl", str(src), str(tmp_path / "out")]) == 0
    assert "StableDiffusionXLPipeline" in capsys.readouterr().out
    assert main(["convert", "jsdxl", str(src), str(tmp_path / "out")]) == 2  # OUT not empty
    err = capsys.readouterr().err
    assert err.startswith("evomm convert: ") and err.count("\n") == 1 and "already exists" in err
    assert main(["convert", "jsdxl", str(tmp_path / "out"), str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "already a standard StableDiffusionXLPipeline" in err and err.count("\n") == 1
    assert not (tmp_path / "again").exists()


def _variant(src, tmp_path, edit):
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    edit(bad)
    return bad


def _set_index(key, value):
    def edit(root):
        index = json.loads((root / "model_index.json").read_text())
        index[key] = value
        (root / "model_index.json").write_text(json.dumps(index))
    return edit


@pytest.mark.parametrize("edit, error, match", [
    (_set_index("text_encoder", ["modeling_ja_clip", "JapaneseCLIPTextModel"]), ConfigError, "text_encoder"),
    (_set_index("tokenizer", ["tokenization_ja", "JapaneseTokenizer"]), ConfigError, "tokenizer"),
    (_set_index("tokenizer", ["transformers", "NoSuchTokenizer"]), ConfigError, "NoSuchTokenizer"),
    (_set_index("safety_checker", ["diffusers", "StableDiffusionSafetyChecker"]), ConfigError, "safety_checker"),
    (_set_index("null_encoder", ["modeling_clipnull", "SomethingElse"]), ConfigError, "null_encoder"),
    (_set_index("_class_name", "StableDiffusionPipeline"), ConfigError, "_class_name"),
    (lambda r: (r / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tok.JaTokenizer", None]}})), ConfigError, "auto_map"),
    (lambda r: (r / "text_encoder" / "model.fp16.safetensors").rename(r / "text_encoder" / "pytorch_model.fp16.bin"),
     CheckpointError, "pickled"),
    (lambda r: (r / "unet" / "config.json").write_text(json.dumps(
        {**json.loads((r / "unet" / "config.json").read_text()), "cross_attention_dim": 2048})), ConfigError, "2048"),
    (lambda r: shutil.rmtree(r / "vae"), CheckpointError, "vae"),
])
def test_unrecognised_layouts_are_refused(converted, tmp_path, edit, error, match):
    src, _, _ = converted
    bad = _variant(src, tmp_path, edit)
    with pytest.raises(error, match=match) as info:
        convert_jsdxl(bad, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_saved_null_encoder_must_be_zero(converted, tmp_path):
    src, _, _ = converted

    def add_null(root, value):
        (root / "null_encoder").mkdir(exist_ok=True)
        (root / "null_encoder" / "config.json").write_text(json.dumps({"hidden_size": NULL_WIDTH}))
        weights = root / "null_encoder" / "diffusion_pytorch_model.safetensors"
        save_file({"dummy": torch.full((2,), value)}, str(weights))
        _set_index("null_encoder", ["modeling_clipnull", "CLIPNullTextModel"])(root)

    ok = _variant(src, tmp_path, lambda r: add_null(r, 0.0))
    assert convert_jsdxl(ok, tmp_path / "ok")["null_width"] == NULL_WIDTH
    shutil.rmtree(ok)
    bad = _variant(src, tmp_path, lambda r: add_null(r, 1.0))
    with pytest.raises(ConfigError, match="not all zero"):
        convert_jsdxl(bad, tmp_path / "out")
    with pytest.raises(OutputExistsError):
        convert_jsdxl(src, tmp_path / "ok")
