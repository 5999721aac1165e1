"""The toy SDXL zoo builder (small mode): loadable pipelines, tokenizers, scorer, reproducibility."""

from __future__ import annotations

import json

import pytest
import torch

from evomm.zoo_sdxl import data
from evomm.zoo_sdxl.build import build_zoo, verify


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl") / "zoo"
    manifest = build_zoo(out, seed=3, small=True)
    return out, manifest


def test_layout_and_hashes(zoo):
    out, manifest = zoo
    for name in ("base", "japanese", "fewstep"):
        assert (out / name / "model_index.json").is_file()
        assert (out / name / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "clip" / "open_clip_model.safetensors").is_file()
    assert verify(out) == []
    weights = out / "fewstep" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert verify(out) == ["fewstep/unet/diffusion_pytorch_model.safetensors"]


def test_pipelines_load_offline_and_draw(zoo):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    out, _ = zoo
    pipe = StableDiffusionXLPipeline.from_pretrained(out / "fewstep", dtype=torch.float32, local_files_only=True)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.unet.config.addition_embed_type == "text_time"
    images = pipe(["a red circle", "a blue square"], num_inference_steps=4, guidance_scale=0.0,
                  output_type="pt").images
    assert images.shape == (2, 3, 32, 32)
    assert torch.isfinite(images).all()


def test_japanese_tokenizer_splits_morphemes(zoo):
    from transformers import CLIPTokenizer

    out, _ = zoo
    tok = CLIPTokenizer.from_pretrained(out / "japanese" / "tokenizer")
    ids = tok("暗い背景に黄色い三角").input_ids
    assert [tok.decode([i]) for i in ids[1:-1]] == ["暗い", "背景", "に", "黄色い", "三角"]
    # pooling reads the end token: the text encoder config must agree with the tokenizer
    config = json.loads((out / "japanese" / "text_encoder_2" / "config.json").read_text())
    assert config["eos_token_id"] == tok.eos_token_id == ids[-1]
    en = CLIPTokenizer.from_pretrained(out / "base" / "tokenizer")
    assert len(en("a purple triangle").input_ids) == 5  # bos + 3 whole words + eos


def test_open_clip_scorer_loads_from_local_dir(zoo):
    import open_clip

    out, _ = zoo
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out / 'clip'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out / 'clip'}")
    text = model.encode_text(tokenizer(["a red circle"]))
    image = model.encode_image(torch.zeros(1, 3, 32, 32))
    assert text.shape == image.shape


def test_prompt_sets(zoo):
    out, _ = zoo
    sets = json.loads((out / "prompts.json").read_text(encoding="utf-8"))["splits"]
    assert len(sets["fitness"]) == len(sets["heldout"]) == data.NUM_CLASSES * 2 * 5
    fit_texts = {p["text"] for p in sets["fitness"]}
    assert not fit_texts & {p["text"] for p in sets["heldout"]}  # held-out phrasings are unseen by fitness
    assert all(p["gloss"] == data.english_caption(p["label"]) for p in sets["heldout"])


def test_build_is_reproducible(zoo, tmp_path):
    out, manifest = zoo
    again = build_zoo(tmp_path / "zoo", seed=3, small=True)
    weights = {k: v for k, v in manifest["sha256"].items() if k.endswith(".safetensors")}
    assert weights and weights == {k: v for k, v in again["sha256"].items() if k.endswith(".safetensors")}
    assert manifest["stages_from_cache"] == []


def test_build_resumes_from_its_stage_cache(zoo, tmp_path):
    """A second build with the same cache trains nothing and writes the same weights."""
    _, manifest = zoo
    first = build_zoo(tmp_path / "a", seed=3, small=True, cache_dir=tmp_path / "cache")
    second = build_zoo(tmp_path / "b", seed=3, small=True, cache_dir=tmp_path / "cache")
    assert first["stages_from_cache"] == []
    assert second["stages_from_cache"] == ["vae", "base", "japanese", "fewstep", "clip"]
    weights = {k: v for k, v in manifest["sha256"].items() if k.endswith(".safetensors")}
    assert weights == {k: v for k, v in second["sha256"].items() if k.endswith(".safetensors")}


def test_render_draws_the_named_colour():
    import numpy as np

    rng = np.random.default_rng(0)
    for label in range(data.NUM_CLASSES):
        img = data.render(label, rng)
        ci, _ = data.class_names(label)
        brightest = img.reshape(-1, 3)[img.reshape(-1, 3).sum(1).argmax()]
        assert np.abs(brightest - np.array(data.COLOURS[ci][1])).max() < 0.1


def test_toy_pipeline_report_on_the_small_zoo(zoo, tmp_path):
    """The toy config's held-out report: four named models, a grid, a loadable evolved pipeline."""
    from pathlib import Path

    import numpy as np
    import yaml
    from diffusers import StableDiffusionXLPipeline

    from evomm.search.config import load_config
    from evomm.pipelines.toy_sdxl_report import report_run
    from evomm.search.stages import build_space

    out, _ = zoo
    text = (Path(__file__).resolve().parent.parent / "pipelines" / "toy_evosdxl_jp.yml").read_text(encoding="utf-8")
    config_path = tmp_path / "toy.yml"
    config_path.write_text(text.replace("../assets/sdxl_zoo", str(out)), encoding="utf-8")
    config = load_config(config_path)
    space = build_space(config.stages[0].space, config.sources, config.seed)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    genome = np.random.default_rng(0).uniform(space.lower, space.upper)
    (run_dir / "best_recipe.yml").write_text(yaml.safe_dump(space.decode(genome)))
    result = report_run(config_path, run_dir, log=lambda *_: None)
    saved = json.loads((run_dir / "results.json").read_text())
    assert set(saved["models"]) >= {"japanese_parent", "fewstep_parent", "uniform", "evolved"}
    assert "search_start" in saved["models"]  # the config starts at weight 1, not at the uniform 0.5
    assert all(0.0 <= m["clip_score"] <= 100.0 for m in saved["models"].values())
    assert saved["models"] == json.loads(json.dumps(result["models"]))
    assert (run_dir / "grid.png").is_file()
    pipe = StableDiffusionXLPipeline.from_pretrained(run_dir / "pipeline", local_files_only=True)
    from safetensors.torch import load_file

    # the saved pipeline carries the evolved UNet (not the Japanese parent's)
    evolved_unet = load_file(str(run_dir / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    parent_unet = load_file(str(out / "japanese" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(evolved_unet[k].float(), parent_unet[k].float()) for k in parent_unet)
    assert pipe.tokenizer("赤い丸").input_ids[1] != pipe.tokenizer("青い丸").input_ids[1]


def test_evolve_writes_the_held_out_report_itself(zoo, tmp_path):
    """`evomm evolve pipelines/toy_evosdxl_jp.yml` ends with results.json and the grid (after_run hook)."""
    from pathlib import Path

    import yaml

    from evomm.cli import main

    out, _ = zoo
    text = (Path(__file__).resolve().parent.parent / "pipelines" / "toy_evosdxl_jp.yml").read_text(encoding="utf-8")
    config = yaml.safe_load(text.replace("../assets/sdxl_zoo", str(out)))
    config["optimizer"].update(popsize=2, generations=1)
    config["fitness"]["n_samples"] = 4
    config_path = tmp_path / "toy.yml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    run_dir = tmp_path / "run"
    assert main(["evolve", str(config_path), "--out", str(run_dir), "--no-progress"]) == 0
    saved = json.loads((run_dir / "results.json").read_text())
    assert set(saved["models"]) >= {"japanese_parent", "fewstep_parent", "uniform", "evolved"}
    assert (run_dir / "grid.png").is_file() and (run_dir / "best_recipe.yml").is_file()


def test_guided_teacher_is_classifier_free_guidance_with_zero_unconditional():
    """The few-step student's target: uncond + g * (cond - uncond), uncond from zero embeddings."""
    from evomm.zoo_sdxl import models, train

    sizes = models.SMALL
    unet = models.build_unet(sizes, seed=0)
    gen = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([999, 249])
    cond = torch.randn(2, 5, sizes.cross_attention_dim, generator=gen)
    pooled = torch.randn(2, sizes.pooled_dim, generator=gen)
    time_ids = torch.tensor(train.TIME_IDS).repeat(2, 1)

    def run(c, p):
        with torch.no_grad():
            return unet(noisy, t, encoder_hidden_states=c,
                        added_cond_kwargs={"text_embeds": p, "time_ids": time_ids}).sample

    conditioned, uncond = run(cond, pooled), run(torch.zeros_like(cond), torch.zeros_like(pooled))
    assert not torch.allclose(conditioned, uncond)
    for g in (0.0, 1.0, 3.0):
        target = train.guided_teacher(unet, g)(noisy, t, cond, pooled, time_ids)
        torch.testing.assert_close(target, uncond + g * (conditioned - uncond), rtol=1e-4, atol=1e-5)
