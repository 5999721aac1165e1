"""The `sdxl_clip_score` fitness and the SDXL pipeline configs (validated without weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evomm.errors import ConfigError
from evomm.metrics.clip_score import ClipScorer
from evomm.fitness.sdxl_clip_score import load_prompts

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A small random open_clip model saved in open_clip's local-dir layout."""
    from safetensors.torch import save_file

    from evomm.zoo_sdxl import models

    path = tmp_path_factory.mktemp("clip") / "clip"
    path.mkdir()
    model = models.build_open_clip(models.SMALL, 0)
    cfg = {"model_cfg": models.open_clip_config(models.SMALL), "preprocess_cfg": models.CLIP_PREPROCESS}
    (path / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


def test_clip_score_is_100_times_clipped_cosine(clip_dir):
    """The fitness scores the zoo's open_clip (local-dir layout) with the metrics' ClipScorer."""
    scorer = ClipScorer(f"local-dir:{clip_dir}", batch_size=3)
    images = torch.rand(4, 3, 32, 32)
    texts = ["a red circle", "a blue square", "a red circle", "x"]
    got = torch.from_numpy(scorer.score_tensors(images, texts)).float()
    x = (images - 0.5) / 0.5
    img = torch.nn.functional.normalize(scorer.model.encode_image(x), dim=-1)
    txt = torch.nn.functional.normalize(scorer.model.encode_text(scorer.tokenizer(texts)), dim=-1)
    want = 100 * (img * txt).sum(-1).clamp(min=0)
    torch.testing.assert_close(got, want.detach(), atol=1e-4, rtol=1e-4)
    assert (got >= 0).all() and (got <= 100).all()
    # other image sizes are resized to the scorer's input
    assert scorer.score_tensors(torch.rand(2, 3, 64, 64), texts[:2]).shape == (2,)


def test_load_prompts(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"splits": {"fit": [{"text": "赤い丸", "gloss": "a red circle"}, "a cat"]}}))
    items = load_prompts(path, "fit")
    assert [(p.text, p.gloss) for p in items] == [("赤い丸", "a red circle"), ("a cat", "a cat")]
    assert len(load_prompts(path, "fit", 1)) == 1
    with pytest.raises(ConfigError, match="split"):
        load_prompts(path, "nope")
    with pytest.raises(ConfigError, match="no such prompt file"):
        load_prompts(tmp_path / "missing.json", "fit")


def test_fitness_through_the_registry(tmp_path, clip_dir):
    """End to end through the engine's fitness lookup on a small random pipeline."""
    from evomm.fitness.registry import FitnessContext, build_evaluator
    from evomm.zoo_sdxl import models

    tok = models.build_tokenizer(["a red circle"])
    tok.save_pretrained(tmp_path / "tok")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    pipe = models.assemble_pipeline(models.build_vae(models.SMALL, 0), *models.build_text_encoders(tok, models.SMALL, 0),
                                    tok, models.build_unet(models.SMALL, 0))
    pipe.save_pretrained(tmp_path / "ja")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"splits": {"fitness": [{"text": "赤い丸", "gloss": "a red circle"}] * 3}}))
    ctx = FitnessContext(
        metric="sdxl_clip_score", sources={"ja": str(tmp_path / "ja")},
        space={}, dataset=str(prompts), split="fitness", generation={"steps": 2, "batch_size": 2},
        options={"pipeline": "ja", "clip_model": f"local-dir:{clip_dir}", "images_dir": str(tmp_path / "imgs")})
    evaluator = build_evaluator(ctx)
    ja = str(tmp_path / "ja")
    spec = {"merge_method": "linear", "models": [{"model": ja, "parameters": {"weight": 1.0}}]}
    first = evaluator.evaluate(spec)
    assert first == evaluator.evaluate(spec)  # deterministic: fixed noise per prompt
    assert 0.0 <= first <= 100.0
    assert (tmp_path / "imgs" / "best.png").is_file()
    assert set(evaluator.last_seconds) == {"merge", "generate", "score"}
    with pytest.raises(ConfigError, match="unknown option"):
        build_evaluator(FitnessContext(**{**ctx.__dict__, "options": {**ctx.options, "bogus": 1}}))


SDXL_BASE_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (architecture keys)
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    use_linear_projection=True,
)


def test_real_scale_config_builds_its_search_space_without_weights():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from evomm.adapters import adapter_for_names
    from evomm.search.config import load_config
    from evomm.search.ps_space import PSSpace
    from evomm.search.stages import build_space

    config = load_config(ROOT / "pipelines" / "evosdxl_jp.yml")
    stage = config.stages[0]
    assert stage.fitness.metric == "sdxl_clip_score"
    assert stage.fitness.generation["steps"] == 4 and stage.fitness.generation["guidance_scale"] == 0.0
    assert stage.fitness.generation["timestep_spacing"] == "trailing"
    assert stage.fitness.options["pipeline"] == "jsdxl"
    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_BASE_UNET)
    adapter = adapter_for_names([n for n, _ in unet.named_parameters()])
    assert adapter.num_layers == stage.space.num_layers == 20
    space = build_space(stage.space, config.sources, config.seed)
    assert isinstance(space, PSSpace)
    assert space.dim == 4 * 3 * 9  # models x (K, V, rest) x block groups
    recipe = space.decode(space.initial())
    assert recipe["merge_method"] == "task_arithmetic"
    assert any(entry.get("filter") == "attn2.to_k" for entry in recipe["models"][0]["parameters"]["weight"])
    from evomm.merge.recipe import Recipe

    Recipe.from_dict(recipe)  # a valid `evomm merge` recipe


def test_toy_config_builds_its_search_space():
    from evomm.search.config import load_config
    from evomm.search.stages import build_space

    zoo = ROOT / "assets" / "sdxl_zoo"
    assert (zoo / "japanese" / "model_index.json").exists(), "the shipped toy SDXL zoo is missing"
    config = load_config(ROOT / "pipelines" / "toy_evosdxl_jp.yml")
    space = build_space(config.stages[0].space, config.sources, config.seed)
    assert space.num_layers == 10  # embed, down.0.0, down.0.sample, down.1.0, mid, up.0.0-1, up.1.0-1, out
    assert space.dim == 2 * 3 * 10  # task-arithmetic weight per model for (K, V, rest) per block
    assert space.initial().tolist() == [1.0] * space.dim  # starts at plain task arithmetic
    assert config.extras["report"]["parents"] == {"japanese_parent": "japanese", "fewstep_parent": "fewstep"}


def test_summarise_runs_as_json_and_markdown(tmp_path, capsys):
    from evomm.pipelines.toy_sdxl_report import main

    for run, scores in {"s0": (60.0, 80.0), "s1": (60.0, 84.0)}.items():
        (tmp_path / run).mkdir()
        models = {"japanese_parent": {"clip_score": scores[0]}, "evolved": {"clip_score": scores[1]}}
        (tmp_path / run / "results.json").write_text(json.dumps({"models": models}))
    runs = [str(tmp_path / "s0"), str(tmp_path / "s1")]
    assert main(["summarise", *runs]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["evolved"]["mean"] == 82.0 and summary["japanese_parent"]["std"] == 0.0
    assert main(["summarise", *runs, "--markdown"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| model | s0 | s1 | mean ± s.d. |"
    assert table[3] == "| `evolved` | 80.00 | 84.00 | 82.00 ± 2.83 |"
    assert main(["summarise", str(tmp_path / "missing")]) == 2
    assert "no results.json" in capsys.readouterr().err
