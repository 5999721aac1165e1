"""Adapters: tensor names <-> slots for decoder LLMs, LLaVA layouts and SDXL UNets."""

from __future__ import annotations

import pytest

from evomm.adapters import Slot, adapter_for_names, diffusers_to_ldm_names
from evomm.errors import ArchitectureError
from testkit.tiny import tiny_llava, tiny_mistral, tiny_sdxl_unet


@pytest.fixture(scope="module")
def mistral_names():
    return list(tiny_mistral().state_dict())


def _llava_on_disk_names(next_version=False):
    """Names as save_pretrained writes them (llava-hf layout), derived from in-memory names."""
    names = []
    for n in tiny_llava(next_version=next_version).state_dict():
        if n.startswith("model.language_model."):
            names.append("language_model.model." + n[len("model.language_model."):])
        elif n == "lm_head.weight":
            names.append("language_model.lm_head.weight")
        else:
            names.append(n[len("model."):])
    return names


def test_decoder_llm(mistral_names):
    ad = adapter_for_names(mistral_names, {"model_type": "mistral"})
    assert (ad.kind, ad.layout, ad.num_layers) == ("llm", "causal_lm", 4)
    assert ad.slot_of("model.layers.2.mlp.up_proj.weight") == Slot("text", 2, "mlp.up_proj.weight")
    assert ad.slot_of("model.embed_tokens.weight") == Slot("text", None, "embed_tokens.weight")
    assert ad.slot_of("lm_head.weight") == Slot("text", None, "lm_head.weight")
    assert all(ad.name_of(ad.slot_of(n)) == n for n in mistral_names)
    assert ad.layer_t("model.layers.3.mlp.up_proj.weight") == 1.0 and ad.layer_t("model.norm.weight") == 0.0


@pytest.mark.parametrize("layout", ["llava_hf", "llava_tf5", "llava_original"])
def test_llava_layouts_share_slots_with_the_llm(mistral_names, layout):
    in_memory = list(tiny_llava().state_dict())  # transformers 5: model.language_model.*, model.vision_tower.*
    if layout == "llava_tf5":
        names = in_memory
    elif layout == "llava_hf":
        names = _llava_on_disk_names()
    else:  # original LLaVA repo: LLM names + model.mm_projector / model.vision_tower
        names = [n.replace("model.language_model.", "model.").replace("model.multi_modal_projector.", "model.mm_projector.")
                 for n in in_memory]
    ad = adapter_for_names(names)
    llm = adapter_for_names(mistral_names)
    assert (ad.kind, ad.layout, ad.num_layers) == ("vlm", layout, 4)
    text = [n for n in names if ad.slot_of(n).component == "text"]
    assert len(text) == len(mistral_names)
    # every text slot of the VLM names the same tensor in the plain LLM
    assert {llm.name_of(ad.slot_of(n)) for n in text} == set(mistral_names)
    kept = {ad.slot_of(n).component for n in names} - {"text"}
    assert kept == {"vision", "projector"}
    assert all(ad.name_of(ad.slot_of(n)) == n for n in names)


def test_llava_next_image_newline():
    names = _llava_on_disk_names(next_version=True)
    ad = adapter_for_names(names)
    assert "image_newline" in names and ad.slot_of("image_newline") == Slot("image_newline", None, "image_newline")
    assert ad.name_of(Slot("image_newline", None, "image_newline")) == "image_newline"
    tf5 = adapter_for_names(list(tiny_llava(next_version=True).state_dict()))
    assert tf5.name_of(Slot("image_newline", None, "image_newline")) == "model.image_newline"


def test_unknown_architecture():
    with pytest.raises(ArchitectureError, match="unrecognised architecture"):
        adapter_for_names(["encoder.block.0.weight"])


@pytest.fixture(scope="module")
def unet():
    return tiny_sdxl_unet()


def test_sdxl_blocks_and_cross_attention(unet):
    names = list(unet.state_dict())
    ad = adapter_for_names(names, dict(unet.config))
    assert ad.kind == "sdxl_unet" and ad.layout == "diffusers"
    assert ad.layer_groups() == ["embed", "down.0.0", "down.0.sample", "down.1.0", "mid",
                                 "up.0.0", "up.0.1", "up.1.0", "up.1.1", "out"]
    groups = ad.layer_groups()
    assert groups[ad.slot_of("add_embedding.linear_1.weight").layer] == "embed"
    assert groups[ad.slot_of("down_blocks.0.downsamplers.0.conv.weight").layer] == "down.0.sample"
    assert groups[ad.slot_of("up_blocks.0.upsamplers.0.conv.weight").layer] == "up.0.1"
    assert groups[ad.slot_of("conv_out.weight").layer] == "out"
    kv = [n for n in names if ad.is_cross_attn_kv(n)]
    assert kv and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in kv)
    assert not ad.is_cross_attn_kv("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.weight")


def test_single_file_names_agree_with_diffusers_converter(unet):
    """Our single-file <-> diffusers mapping, checked against diffusers' own converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    state = unet.state_dict()
    to_ldm = diffusers_to_ldm_names(list(state), unet.config.layers_per_block)
    ldm_state = {to_ldm[k]: v for k, v in state.items()}
    converted = convert_ldm_unet_checkpoint(ldm_state, dict(unet.config))
    assert set(converted) == set(state) and all(converted[k] is state[k] for k in state)

    single = adapter_for_names(list(ldm_state) + ["conditioner.embedders.0.x"])
    diff = adapter_for_names(list(state), dict(unet.config))
    assert single.layout == "single_file" and single.num_layers == diff.num_layers
    assert all(single.slot_of(to_ldm[k]) == diff.slot_of(k) for k in state)
    assert all(single.name_of(diff.slot_of(k)) == to_ldm[k] for k in state)
    assert single.slot_of("conditioner.embedders.0.x").component == "other"


def test_sdxl_real_layout_block_count():
    """A full-size SDXL name list (layers_per_block=2, 3 down blocks) gives 20 blocks."""
    names = ["conv_in.weight", "time_embedding.linear_1.weight", "add_embedding.linear_1.weight"]
    for b in range(3):
        for j in range(2):
            names.append(f"down_blocks.{b}.resnets.{j}.conv1.weight")
            if b > 0:
                names.append(f"down_blocks.{b}.attentions.{j}.transformer_blocks.0.attn2.to_k.weight")
        if b < 2:
            names.append(f"down_blocks.{b}.downsamplers.0.conv.weight")
    names += ["mid_block.resnets.0.conv1.weight", "mid_block.attentions.0.proj_in.weight", "mid_block.resnets.1.conv1.weight"]
    for b in range(3):
        for j in range(3):
            names.append(f"up_blocks.{b}.resnets.{j}.conv1.weight")
            if b < 2:
                names.append(f"up_blocks.{b}.attentions.{j}.proj_in.weight")
        if b < 2:
            names.append(f"up_blocks.{b}.upsamplers.0.conv.weight")
    names += ["conv_norm_out.weight", "conv_out.weight"]
    ad = adapter_for_names(names, {"layers_per_block": 2})
    assert ad.num_layers == 20
    ldm = diffusers_to_ldm_names(names, 2)
    assert ldm["up_blocks.0.upsamplers.0.conv.weight"] == "model.diffusion_model.output_blocks.2.2.conv.weight"
    assert ldm["up_blocks.2.resnets.2.conv1.weight"] == "model.diffusion_model.output_blocks.8.0.in_layers.2.weight"
    single = adapter_for_names(list(ldm.values()))
    assert single.layers_per_block == 2
    assert all(single.slot_of(ldm[n]) == ad.slot_of(n) for n in names)
