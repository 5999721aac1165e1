"""`evomm merge` end to end: LLM, LLaVA x Mistral (cross-architecture), LLaVA-NeXT, SDXL UNets."""

from __future__ import annotations

import yaml
import pytest
import torch
from safetensors.torch import load_file

from evomm.cli import main
from testkit.merge_examples import (make_llm_family, make_unet_family, make_vlm,
                                    save_single_file_unet)
from testkit.tiny import tiny_sdxl_unet


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    paths = make_llm_family(root)
    paths["vlm"] = make_vlm(root / "vlm")
    paths["vlm_next"] = make_vlm(root / "vlm_next", next_version=True)
    return paths


def _run(tmp_path, recipe: dict, *extra: str) -> int:
    cfg = tmp_path / "recipe.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    return main(["merge", str(cfg), str(tmp_path / "out"), "--no-progress", *extra])


def _weights(path):
    return load_file(path / "model.safetensors")


def test_llm_ties_writes_a_loadable_model_with_card_and_recipe(zoo, tmp_path):
    from transformers import AutoTokenizer, MistralForCausalLM

    recipe = {"merge_method": "ties", "base_model": str(zoo["base"]), "dtype": "bfloat16",
              "models": [{"model": str(zoo["ft1"]), "parameters": {"weight": 0.6, "density": 0.5}},
                         {"model": str(zoo["ft2"]), "parameters": {"weight": 0.4, "density": 0.5}}]}
    assert _run(tmp_path, recipe) == 0
    out = tmp_path / "out"
    model = MistralForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert AutoTokenizer.from_pretrained(out).convert_ids_to_tokens(5) == "tok5"
    card = (out / "README.md").read_text()
    assert "ties" in card and str(zoo["ft1"]) in card
    assert yaml.safe_load((out / "evomm_recipe.yml").read_text())["merge_method"] == "ties"
    # the saved recipe re-runs to the same weights
    assert main(["merge", str(out / "evomm_recipe.yml"), str(tmp_path / "again"), "--no-progress"]) == 0
    a, b = _weights(out), _weights(tmp_path / "again")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_llava_x_mistral(zoo, tmp_path):
    from transformers import LlavaForConditionalGeneration

    w_vlm, w_llm = 0.7, [0.2, 0.8]
    recipe = {"merge_method": "task_arithmetic", "base_model": str(zoo["base"]), "dtype": "float32",
              "models": [{"model": str(zoo["vlm"]), "parameters": {"weight": w_vlm}},
                         {"model": str(zoo["ft1"]), "parameters": {"weight": w_llm}}],
              "evomm": {"architecture": "llava_x_llm", "tokenizer_source": str(zoo["vlm"])}}
    assert _run(tmp_path, recipe) == 0
    out = tmp_path / "out"
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    cfg = model.config
    ids = torch.tensor([[1] + [cfg.image_token_index] * 16 + [5, 6]])
    generated = model.generate(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32), max_new_tokens=3,
                               do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 3)

    merged, vlm = _weights(out), _weights(zoo["vlm"])
    base, llm = _weights(zoo["base"]), _weights(zoo["ft1"])
    assert set(merged) == set(vlm)
    kept = [k for k in vlm if k.startswith(("vision_tower.", "multi_modal_projector."))]
    assert kept and all(torch.equal(merged[k], vlm[k]) for k in kept)
    # layer 3 of 4 sits at t=1 of the gradient: weight 0.8 for the LLM
    name = "model.layers.3.self_attn.q_proj.weight"
    expected = base[name] + w_vlm * (vlm["language_model." + name] - base[name]) + 0.8 * (llm[name] - base[name])
    torch.testing.assert_close(merged["language_model." + name], expected, atol=1e-6, rtol=0)
    # vocabulary: 128 shared rows merged (t=0 -> LLM weight 0.2), 4 extra rows kept from the VLM
    emb, vemb = merged["language_model.model.embed_tokens.weight"], vlm["language_model.model.embed_tokens.weight"]
    b, l = base["model.embed_tokens.weight"], llm["model.embed_tokens.weight"]
    torch.testing.assert_close(emb[:128], b + w_vlm * (vemb[:128] - b) + 0.2 * (l - b), atol=1e-6, rtol=0)
    assert torch.equal(emb[128:], vemb[128:])
    assert emb.shape == vemb.shape == (132, 32)


def test_llava_next_x_mistral_keeps_image_newline(zoo, tmp_path):
    from transformers import LlavaNextForConditionalGeneration

    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(zoo["vlm_next"]), "parameters": {"weight": 0.5}},
                         {"model": str(zoo["ft2"]), "parameters": {"weight": 0.5}}]}
    assert _run(tmp_path, recipe) == 0
    out = tmp_path / "out"
    model = LlavaNextForConditionalGeneration.from_pretrained(out).eval()
    merged, vlm, llm = _weights(out), _weights(zoo["vlm_next"]), _weights(zoo["ft2"])
    assert torch.equal(merged["image_newline"], vlm["image_newline"])
    assert torch.equal(model.model.image_newline.detach(), vlm["image_newline"])
    name = "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(merged["language_model." + name],
                               0.5 * vlm["language_model." + name] + 0.5 * llm[name], atol=1e-6, rtol=0)
    assert model.generate(input_ids=torch.tensor([[1, 5, 6]]), max_new_tokens=2, do_sample=False).shape == (1, 5)


@pytest.fixture(scope="module")
def unets(tmp_path_factory):
    root = tmp_path_factory.mktemp("unets")
    paths = make_unet_family(root)
    single = root / "ft2_single.safetensors"
    save_single_file_unet(tiny_sdxl_unet(seed=2, base_seed=0, scale=0.02), single,
                          extra={"conditioner.embedders.0.proj": torch.ones(3)})
    paths["single"] = single
    return paths


def _block_weights(n):
    return [round(0.1 + 0.08 * i, 4) for i in range(n)]  # one value per block (10 blocks)


def test_sdxl_unet_per_block_weights(unets, tmp_path):
    from diffusers import UNet2DConditionModel

    from evomm.adapters import adapter_for_names

    weights = _block_weights(10)
    recipe = {"merge_method": "task_arithmetic", "base_model": str(unets["base"]), "dtype": "float16",
              "models": [{"model": str(unets["ft1"]), "parameters": {"weight": weights}},
                         {"model": str(unets["ft2"]),
                          "parameters": {"weight": [{"filter": "attn2.to_k", "value": 0.0}, {"value": 0.5}]}}]}
    assert _run(tmp_path, recipe) == 0
    out = tmp_path / "out"
    unet = UNet2DConditionModel.from_pretrained(out)  # diffusers loads in float32 unless asked
    base = load_file(unets["base"] / "diffusion_pytorch_model.safetensors")
    ft1 = load_file(unets["ft1"] / "diffusion_pytorch_model.safetensors")
    ft2 = load_file(unets["ft2"] / "diffusion_pytorch_model.safetensors")
    merged = load_file(out / "diffusion_pytorch_model.safetensors")
    assert all(t.dtype == torch.float16 for t in merged.values())
    adapter = adapter_for_names(list(base), unet.config)
    for name in ("up_blocks.0.resnets.1.conv1.weight", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                 "conv_in.weight", "mid_block.resnets.0.conv1.weight"):
        block = adapter.slot_of(name).layer
        w2 = 0.0 if "attn2.to_k" in name else 0.5
        expected = base[name] + weights[block] * (ft1[name] - base[name]) + w2 * (ft2[name] - base[name])
        torch.testing.assert_close(merged[name].float(), expected.half().float(), atol=1e-3, rtol=0)


def test_sdxl_single_file_source(unets, tmp_path):
    from diffusers import UNet2DConditionModel

    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(unets["ft1"]), "parameters": {"weight": _block_weights(10)}},
                         {"model": str(unets["single"]), "parameters": {"weight": 1.0}}]}
    assert _run(tmp_path, recipe) == 0
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "out")
    ft1 = load_file(unets["ft1"] / "diffusion_pytorch_model.safetensors")
    ft2 = tiny_sdxl_unet(seed=2, base_seed=0, scale=0.02).state_dict()
    merged = unet.state_dict()
    name = "up_blocks.0.upsamplers.0.conv.weight"  # block up.0.1 = index 6
    w = _block_weights(10)[6]
    torch.testing.assert_close(merged[name], (w * ft1[name] + ft2[name]) / (w + 1.0), atol=1e-6, rtol=0)


def test_pickle_source_with_opt_in(zoo, tmp_path):
    import shutil

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(zoo["ft2"] / "config.json", pickled / "config.json")
    torch.save(_weights(zoo["ft2"]), pickled / "pytorch_model.bin")
    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(zoo["ft1"]), "parameters": {"weight": 1.0}},
                         {"model": str(pickled), "parameters": {"weight": 1.0}}]}
    assert _run(tmp_path, recipe, "--allow-pickle") == 0
    merged, a, b = _weights(tmp_path / "out"), _weights(zoo["ft1"]), _weights(zoo["ft2"])
    torch.testing.assert_close(merged["lm_head.weight"], (a["lm_head.weight"] + b["lm_head.weight"]) / 2)


def test_pipeline_examples_run(tmp_path, monkeypatch):
    """The documented examples run on the checkpoints assets/make_merge_example.py builds."""
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_merge_example", repo / "assets" / "make_merge_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)
    assert module.main(["build/merge_example"]) == 0
    examples = sorted((repo / "pipelines" / "examples").glob("*.yml"))
    assert {p.stem for p in examples} >= {"llm_ties", "llava_x_llm", "sdxl_per_block"}
    for example in examples:
        assert main(["merge", str(example), f"out_{example.stem}", "--no-progress"]) == 0, example
    from transformers import LlavaForConditionalGeneration

    assert isinstance(LlavaForConditionalGeneration.from_pretrained("out_llava_x_llm"), LlavaForConditionalGeneration)
    # the LLM example is a plain mergekit recipe
    from mergekit.config import MergeConfiguration

    MergeConfiguration.model_validate(yaml.safe_load((repo / "pipelines/examples/llm_ties.yml").read_text()))


def test_tied_embeddings_model_supplies_lm_head(zoo, tmp_path):
    """A tied-embedding LLM has no lm_head tensor; its embedding matrix stands in for it."""
    import json
    import shutil

    tied = tmp_path / "tied"
    shutil.copytree(zoo["ft2"], tied)
    state = _weights(tied)
    del state["lm_head.weight"]
    from safetensors.torch import save_file

    save_file(state, str(tied / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(zoo["ft1"]), "parameters": {"weight": 0.5}},
                         {"model": str(tied), "parameters": {"weight": 0.5}}]}
    assert _run(tmp_path, recipe) == 0
    merged, a = _weights(tmp_path / "out"), _weights(zoo["ft1"])
    torch.testing.assert_close(merged["lm_head.weight"],
                               0.5 * a["lm_head.weight"] + 0.5 * state["model.embed_tokens.weight"])


def test_sdxl_single_file_primary_writes_a_single_file(unets, tmp_path):
    from evomm.io import open_source

    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(unets["single"]), "parameters": {"weight": 0.5}},
                         {"model": str(unets["ft1"]), "parameters": {"weight": 0.5}}]}
    assert _run(tmp_path, recipe) == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["README.md", "evomm_recipe.yml", "model.safetensors"]
    out = open_source(tmp_path / "out")
    single = open_source(unets["single"])
    assert set(out.keys()) == set(single.keys())
    assert torch.equal(out.get("conditioner.embedders.0.proj"), torch.ones(3))  # non-UNet parts copied
    ft1 = load_file(unets["ft1"] / "diffusion_pytorch_model.safetensors")
    torch.testing.assert_close(out.get("model.diffusion_model.input_blocks.0.0.weight"),
                               0.5 * single.get("model.diffusion_model.input_blocks.0.0.weight")
                               + 0.5 * ft1["conv_in.weight"])


def test_dry_run_prints_the_plan_and_writes_nothing(zoo, tmp_path, capsys):
    recipe = {"merge_method": "linear", "models": [{"model": str(zoo["vlm"]), "parameters": {"weight": 1.0}},
                                                   {"model": str(zoo["ft1"]), "parameters": {"weight": 1.0}}]}
    assert _run(tmp_path, recipe, "--dry-run") == 0
    printed = capsys.readouterr().out
    assert "architecture: llava_x_llm" in printed and "first 128 rows merged" in printed
    assert not (tmp_path / "out").exists()
