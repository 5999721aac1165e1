"""The SDXL candidate pipeline: in-memory merged UNets, fixed noise, saving, sources of both layouts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from evomm.models.sdxl import SamplerSettings, SDXLCandidatePipeline, image_grid
from evomm.zoo_sdxl import models

CROSS_KV = ("attn2.to_k", "attn2.to_v")


def _perturb(unet, seed: int, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two small SDXL pipelines sharing a base UNet (random weights; text encoders differ)."""
    import copy

    root = tmp_path_factory.mktemp("sdxl_sources")
    tok = models.build_tokenizer(["a red circle", "a blue square", "赤い丸"])
    tok.save_pretrained(root / "tok")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(root / "tok")
    vae = models.build_vae(models.SMALL, 0, scaling_factor=0.5)
    base = models.build_unet(models.SMALL, 0)
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        unet = copy.deepcopy(base)
        _perturb(unet, seed)
        pipe = models.assemble_pipeline(vae, *models.build_text_encoders(tok, models.SMALL, seed), tok, unet)
        pipe.save_pretrained(root / name)
        out[name] = root / name
    base_pipe = models.assemble_pipeline(vae, *models.build_text_encoders(tok, models.SMALL, 0), tok, base)
    base_pipe.save_pretrained(root / "base")
    out["base"] = root / "base"
    return out


def _unet_state(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors"))


def _linear(a, b, wa=0.5, wb=0.5):
    return {"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": wa}},
                                                 {"model": str(b), "parameters": {"weight": wb}}],
            "evomm": {"keep_from": str(a)}}


def test_candidate_unet_is_the_recipe_merge(sources):
    cand = SDXLCandidatePipeline(sources["a"], SamplerSettings(steps=2, batch_size=3))
    cand.set_recipe(_linear(sources["a"], sources["b"], 0.25, 0.75))
    a, b = _unet_state(sources["a"]), _unet_state(sources["b"])
    got = cand.pipe.unet.state_dict()
    for name in a:
        torch.testing.assert_close(got[name], 0.25 * a[name] + 0.75 * b[name])
    # a second candidate overwrites every weight (no leftovers from the first)
    cand.set_recipe(_linear(sources["a"], sources["b"], 1.0, 0.0))
    for name, value in cand.pipe.unet.state_dict().items():
        torch.testing.assert_close(value, a[name])


def test_cross_attention_kv_get_their_own_values(sources):
    cand = SDXLCandidatePipeline(sources["a"])
    spec = {"merge_method": "slerp", "base_model": str(sources["a"]),
            "models": [{"model": str(sources["a"])}, {"model": str(sources["b"])}],
            "parameters": {"t": [{"filter": f, "value": 0.0} for f in CROSS_KV] + [{"value": 1.0}]},
            "evomm": {"keep_from": str(sources["a"])}}
    cand.set_recipe(spec)
    a, b = _unet_state(sources["a"]), _unet_state(sources["b"])
    got = cand.pipe.unet.state_dict()
    kv = [n for n in a if any(f in n for f in CROSS_KV)]
    assert kv
    for name in a:
        torch.testing.assert_close(got[name], a[name] if name in kv else b[name])


def test_fixed_noise_per_prompt(sources):
    cand = SDXLCandidatePipeline(sources["a"], SamplerSettings(steps=2, batch_size=2))
    prepared = cand.prepare(["a red circle", "a red circle", "a blue square"])
    first = cand.generate(prepared)
    assert first.shape == (3, 3, 32, 32)
    assert torch.equal(first, cand.generate(prepared))  # same candidate, same images
    assert not torch.equal(first[0], first[1])  # same prompt, its own seed
    # batching does not change what a prompt gets
    cand.sampler.batch_size = 3
    assert torch.allclose(first, cand.generate(prepared), atol=1e-5)
    again = cand.prepare(["a red circle"])
    assert torch.equal(again.latents[0], prepared.latents[0])


def test_guidance_uses_negative_embeddings(sources):
    cand = SDXLCandidatePipeline(sources["a"], SamplerSettings(steps=2, guidance_scale=5.0))
    prepared = cand.prepare(["a red circle"])
    assert prepared.negative_embeds is not None
    assert cand.generate(prepared).shape == (1, 3, 32, 32)


def test_merged_unet_and_pipeline_save_and_load(sources, tmp_path):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    cand = SDXLCandidatePipeline(sources["a"], SamplerSettings(steps=2))
    cand.set_recipe(_linear(sources["a"], sources["b"], 0.4, 0.6))
    prepared = cand.prepare(["a red circle", "赤い丸"])
    images = cand.generate(prepared)

    cand.pipe.unet.save_pretrained(tmp_path / "unet")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    for name, value in cand.pipe.unet.state_dict().items():
        torch.testing.assert_close(unet.state_dict()[name], value)

    cand.save(tmp_path / "pipeline")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "pipeline", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    again = pipe(["a red circle", "赤い丸"], latents=prepared.latents.clone(), num_inference_steps=2,
                 guidance_scale=0.0, output_type="pt").images
    torch.testing.assert_close(again, images, atol=1e-5, rtol=1e-4)


def test_single_file_source_equals_diffusers_source(sources, tmp_path):
    from evomm.adapters import diffusers_to_ldm_names

    b = _unet_state(sources["b"])
    config = json.loads((sources["b"] / "unet" / "config.json").read_text())
    names = diffusers_to_ldm_names(list(b), config["layers_per_block"])
    assert len(names) == len(b)
    single = {names[k]: v for k, v in b.items()}
    single["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2, 2)  # a VAE tensor rides along
    save_file(single, str(tmp_path / "b_single.safetensors"))

    cand = SDXLCandidatePipeline(sources["a"])
    cand.set_recipe(_linear(sources["a"], sources["b"], 0.3, 0.7))
    from_dir = {k: v.clone() for k, v in cand.pipe.unet.state_dict().items()}
    cand.set_recipe(_linear(sources["a"], tmp_path / "b_single.safetensors", 0.3, 0.7))
    for name, value in cand.pipe.unet.state_dict().items():
        torch.testing.assert_close(value, from_dir[name])
    # the single file can also be the primary (keep_from) source
    spec = _linear(tmp_path / "b_single.safetensors", sources["a"], 0.7, 0.3)
    cand.set_recipe(spec)
    for name, value in cand.pipe.unet.state_dict().items():
        torch.testing.assert_close(value, from_dir[name])


def test_evomm_merge_writes_what_the_candidate_uses(sources, tmp_path):
    from diffusers import UNet2DConditionModel

    from evomm.merge.execute import run_merge
    from evomm.merge.recipe import Recipe

    spec = {"merge_method": "task_arithmetic", "base_model": str(sources["base"]),
            "models": [{"model": str(sources["a"]), "parameters": {"weight": [0.2, 0.9]}},
                       {"model": str(sources["b"]), "parameters": {"weight": [{"filter": "attn2.to_v", "value": 1.0},
                                                                              {"value": 0.3}]}}],
            "evomm": {"keep_from": str(sources["a"])}}
    run_merge(Recipe.from_dict(spec), tmp_path / "merged", progress=False)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "merged")
    cand = SDXLCandidatePipeline(sources["a"])
    cand.set_recipe(spec)
    for name, value in cand.pipe.unet.state_dict().items():
        torch.testing.assert_close(unet.state_dict()[name], value)


def test_sampler_settings_reject_unknown_keys():
    from evomm.errors import ConfigError

    with pytest.raises(ConfigError, match="stepz"):
        SamplerSettings.from_dict({"stepz": 4})
    with pytest.raises(ConfigError, match="scheduler"):
        SamplerSettings.from_dict({"scheduler": "heun++"})


def test_image_grid_shape():
    grid = image_grid(torch.rand(6, 3, 8, 8), rows=2, cols=3, scale=2, pad=1)
    assert grid.size == (3 * 17 + 1, 2 * 17 + 1)


def test_fp16_variant_folders_load_like_plain_ones(sources, tmp_path):
    # Juggernaut-XL and JSDXL ship `unet/diffusion_pytorch_model.fp16.safetensors` only
    from diffusers import StableDiffusionXLPipeline

    from evomm.io import open_source

    pipe = StableDiffusionXLPipeline.from_pretrained(sources["b"], local_files_only=True)
    pipe.to(torch.float16).save_pretrained(tmp_path / "b16", variant="fp16")
    assert (tmp_path / "b16" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (tmp_path / "b16" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    plain = _unet_state(sources["b"])
    src = open_source(tmp_path / "b16")
    assert src.layout == "diffusers" and set(src.keys()) == set(plain)
    name = "conv_in.weight"
    assert src.get(name).dtype == torch.float16
    torch.testing.assert_close(src.get(name).float(), plain[name], atol=1e-3, rtol=1e-3)
    # as a search source (evomm merge / the candidate pipeline) and as the pipeline that draws
    cand = SDXLCandidatePipeline(tmp_path / "b16", SamplerSettings(steps=1))
    cand.set_recipe(_linear(tmp_path / "b16", sources["a"], 1.0, 0.0))
    torch.testing.assert_close(cand.pipe.unet.state_dict()[name].float(), plain[name], atol=1e-3, rtol=1e-3)
