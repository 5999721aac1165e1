"""Miniatures of the real EvoVLM-JP checkpoints: the real classes, on-disk names and quirks, tiny sizes.

What each real checkpoint carries and a small model can carry too:
- `llava_next_mistral` (llava-hf/llava-v1.6-mistral-7b-hf): `LlavaNextForConditionalGeneration`,
  llava-hf's on-disk names (`language_model.model.layers.N`, `language_model.lm_head`,
  `vision_tower.vision_model.…`, `multi_modal_projector.…`, `image_newline`), a `text_config`
  without `num_hidden_layers` (the default, 32, applies), vocab 32064, rope_theta 1e6, no
  sliding window (Mistral-7B-Instruct-v0.2), bfloat16, sharded with an index.
- `mistral_v01` (Mistral-7B-v0.1, and shisa-gamma-7b-v1 fine-tuned from it): vocab 32000,
  rope_theta 1e4, sliding window 4096, bfloat16, sharded.
Only sizes shrink (hidden 32, 4 heads over 2 KV heads, 32 layers, a 32-pixel CLIP tower).
The LLaVA's language model and the Mistral models share their first 32000 embedding rows and
their layers' base, as the real ones share Mistral-7B.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from testkit.tiny import _perturb_

HIDDEN, HEADS, KV_HEADS, LAYERS = 32, 4, 2, 32
VOCAB_MISTRAL, VOCAB_LLAVA = 32000, 32064


def _mistral_config(vocab: int, rope_theta: float, sliding_window: int | None):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS,
        max_position_embeddings=32768, rope_theta=rope_theta, sliding_window=sliding_window,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, dtype="bfloat16",
    )


def _base_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from transformers import MistralForCausalLM

    torch.manual_seed(seed)
    return MistralForCausalLM(_mistral_config(VOCAB_MISTRAL, 1e4, 4096)).state_dict()


def _write_sharded(state: dict[str, torch.Tensor], out: Path, shards: int = 3) -> None:
    """bfloat16 safetensors shards plus `model.safetensors.index.json`, as the hub repos hold them."""
    names = sorted(state)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n].to(torch.bfloat16).contiguous() for n in part}, str(out / file),
                  metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * 2 for t in state.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def mistral_v01(out: Path, *, seed: int = 0, drift: float = 0.0) -> Path:
    """A Mistral-7B-v0.1-shaped checkpoint (drift > 0: a fine-tune of it, like shisa-gamma)."""
    from transformers import MistralForCausalLM

    config = _mistral_config(VOCAB_MISTRAL, 1e4, 4096)
    model = MistralForCausalLM(config)
    model.load_state_dict(_base_state())
    _perturb_(model, seed, drift)
    out.mkdir(parents=True)
    config.architectures = ["MistralForCausalLM"]
    config.to_json_file(out / "config.json")
    _write_sharded(model.state_dict(), out)
    return out


def llava_next_mistral(out: Path, *, seed: int = 1, drift: float = 0.02) -> Path:
    """A llava-v1.6-mistral-7b-hf-shaped checkpoint, saved under llava-hf's on-disk names."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    text = _mistral_config(VOCAB_LLAVA, 1e6, None)
    vision = CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
                              num_attention_heads=HEADS, image_size=32, patch_size=8, projection_dim=HIDDEN)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=VOCAB_LLAVA - 64,
                             image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]], projector_hidden_act="gelu",
                             vision_feature_layer=-2, vision_feature_select_strategy="default",
                             tie_word_embeddings=False, dtype="bfloat16")
    torch.manual_seed(1000)
    model = LlavaNextForConditionalGeneration(config)
    live = dict(model.named_parameters())
    with torch.no_grad():  # the language model starts from the shared Mistral base
        for name, value in _base_state().items():
            target = live[name.replace("model.", "model.language_model.", 1)]
            target[: value.shape[0]].copy_(value)
    _perturb_(model, seed, drift)
    state = {_llava_hf_name(n): t for n, t in model.state_dict().items()}
    out.mkdir(parents=True)
    raw = config.to_dict()
    for key in ("num_hidden_layers",):  # the real text_config leaves these at their defaults
        raw["text_config"].pop(key, None)
    raw["architectures"] = ["LlavaNextForConditionalGeneration"]
    (out / "config.json").write_text(json.dumps(raw, indent=1))
    _write_sharded(state, out)
    llava_processor().save_pretrained(out)
    return out


def _llava_hf_name(name: str) -> str:
    """transformers-5 in-memory name -> the name in llava-hf's safetensors files."""
    for memory, disk in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                         ("model.vision_tower.", "vision_tower.vision_model."),
                         ("model.multi_modal_projector.", "multi_modal_projector."),
                         ("model.image_newline", "image_newline")):
        if name.startswith(memory):
            return disk + name[len(memory):]
    raise AssertionError(f"unexpected LLaVA-NeXT tensor {name}")


def llava_processor(vocab_size: int = VOCAB_LLAVA, image_token_index: int = VOCAB_LLAVA - 64):
    """A LlavaNextProcessor for the miniature: a character-level tokenizer with exactly
    `vocab_size` ids (filler tokens past the alphabet) and `<image>` where the config says."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor, PreTrainedTokenizerFast

    from testkit.tiny_processor import CHAT_TEMPLATE, IMAGE_TOKEN, SPECIAL_TOKENS, tiny_alphabet

    chars = tiny_alphabet(len(tiny_alphabet_all()))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({c: len(SPECIAL_TOKENS) + i for i, c in enumerate(chars)})
    vocab[IMAGE_TOKEN] = image_token_index
    used = set(vocab.values())
    vocab.update({f"<t{i}>": i for i in range(vocab_size) if i not in used})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.add_special_tokens([*SPECIAL_TOKENS, IMAGE_TOKEN])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", padding_side="left",
                                        extra_special_tokens={"image_token": IMAGE_TOKEN})
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = LlavaNextImageProcessor(image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]],
                                              size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                              do_center_crop=True)
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=CHAT_TEMPLATE)


def tiny_alphabet_all() -> list[str]:
    from testkit.tiny_processor import _ASCII, _JAPANESE

    return list(dict.fromkeys(_ASCII + _JAPANESE))


def vqa_split(root: Path, n: int = 4) -> Path:
    """A JSONL split in evomm's VQA format with small coloured pictures and Japanese answers."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    colours = [("赤", (220, 30, 30)), ("青", (30, 30, 220)), ("白", (240, 240, 240)), ("黒", (10, 10, 10))]
    lines = []
    for i in range(n):
        name, rgb = colours[i % len(colours)]
        Image.new("RGB", (40, 40), rgb).save(root / "images" / f"{i}.png")
        lines.append(json.dumps({"image": f"images/{i}.png", "question": "何色ですか？", "answer": f"{name}です。",
                                 "lang": "ja"}, ensure_ascii=False))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "train.jsonl"


def evovlm_sources(root: Path) -> dict[str, Path]:
    """The three sources of `pipelines/evovlm_jp.yml`, as miniatures under `root`."""
    return {
        "mistral_base": mistral_v01(root / "Mistral-7B-v0.1"),
        "llava": llava_next_mistral(root / "llava-v1.6-mistral-7b-hf"),
        "shisa": mistral_v01(root / "shisa-gamma-7b-v1", seed=2, drift=0.02),
    }


# -- stand-ins at the real 7B shapes: real headers, holes for the data -----------------------

def _sparse_safetensors(path: Path, tensors: dict[str, tuple[int, ...]], dtype: str = "BF16") -> int:
    """A safetensors file whose header is real and whose data is a hole (no disk used)."""
    import struct

    size = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors.items():
        nbytes = size
        for d in shape:
            nbytes *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    return offset


def _mistral_7b_tensors(prefix: str, head: str, vocab: int) -> dict[str, tuple[int, ...]]:
    hidden, inter, kv = 4096, 14336, 1024
    out = {f"{prefix}embed_tokens.weight": (vocab, hidden), f"{prefix}norm.weight": (hidden,), head: (vocab, hidden)}
    for i in range(32):
        p = f"{prefix}layers.{i}."
        out.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                    p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                    p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                    p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                    p + "post_attention_layernorm.weight": (hidden,)})
    return out


def _clip_vit_l_336_tensors(prefix: str) -> dict[str, tuple[int, ...]]:
    d, mlp = 1024, 4096
    out = {prefix + "embeddings.class_embedding": (d,), prefix + "embeddings.patch_embedding.weight": (d, 3, 14, 14),
           prefix + "embeddings.position_embedding.weight": (577, d), prefix + "pre_layrnorm.weight": (d,),
           prefix + "pre_layrnorm.bias": (d,), prefix + "post_layernorm.weight": (d,), prefix + "post_layernorm.bias": (d,)}
    for i in range(24):
        p = f"{prefix}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"self_attn.{proj}.weight"], out[p + f"self_attn.{proj}.bias"] = (d, d), (d,)
        for norm in ("layer_norm1", "layer_norm2"):
            out[p + f"{norm}.weight"], out[p + f"{norm}.bias"] = (d,), (d,)
        out.update({p + "mlp.fc1.weight": (mlp, d), p + "mlp.fc1.bias": (mlp,), p + "mlp.fc2.weight": (d, mlp),
                    p + "mlp.fc2.bias": (d,)})
    return out


def _write_sparse_checkpoint(out: Path, tensors: dict[str, tuple[int, ...]], config: dict, shards: int = 4) -> Path:
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i * per:(i + 1) * per]}
        total += _sparse_safetensors(out / file, part)
        weight_map.update({n: file for n in part})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return out


MISTRAL_7B_V01_CONFIG = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
    "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 32000}

LLAVA_V16_MISTRAL_CONFIG = {  # llava-hf/llava-v1.6-mistral-7b-hf's config.json, as published
    "architectures": ["LlavaNextForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "model_type": "llava_next", "projector_hidden_act": "gelu", "torch_dtype": "bfloat16",
    "text_config": {"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "architectures": ["MistralForCausalLM"],
                    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
                    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
                    "sliding_window": None, "torch_dtype": "bfloat16", "vocab_size": 32064},
    "use_image_newline_parameter": True, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
                      "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
                      "vocab_size": 32000}}


def sparse_7b_sources(root: Path) -> dict[str, Path]:
    """The three sources of `pipelines/evovlm_jp.yml` at their real shapes, names and configs,
    ~44 GB on paper and a few kB on disk (estimates and planning only: the data are holes)."""
    llava = _mistral_7b_tensors("language_model.model.", "language_model.lm_head.weight", 32064)
    llava.update(_clip_vit_l_336_tensors("vision_tower.vision_model."))
    llava.update({"multi_modal_projector.linear_1.weight": (4096, 1024), "multi_modal_projector.linear_1.bias": (4096,),
                  "multi_modal_projector.linear_2.weight": (4096, 4096), "multi_modal_projector.linear_2.bias": (4096,),
                  "image_newline": (4096,)})
    mistral = _mistral_7b_tensors("model.", "lm_head.weight", 32000)
    return {
        "mistral_base": _write_sparse_checkpoint(root / "Mistral-7B-v0.1", mistral, MISTRAL_7B_V01_CONFIG),
        "llava": _write_sparse_checkpoint(root / "llava-v1.6-mistral-7b-hf", llava, LLAVA_V16_MISTRAL_CONFIG),
        "shisa": _write_sparse_checkpoint(root / "shisa-gamma-7b-v1", mistral, MISTRAL_7B_V01_CONFIG),
    }


# -- the sources of pipelines/evosdxl_jp.yml, in their real layouts, from the toy SDXL zoo ----

SDXL_ZOO = Path(__file__).resolve().parents[1] / "assets" / "sdxl_zoo"


def evosdxl_sources(root: Path) -> dict[str, Path]:
    """Five SDXL sources in the layouts the real recipe names: SDXL base as a diffusers folder,
    JSDXL (converted) with fp16 variant files only, SDXL-Lightning as one diffusers-named UNet
    file, Juggernaut-XL as a single-file checkpoint with LDM names, DPO as a bare `unet/` folder.
    All are the toy zoo's SDXL-architecture UNets (sharing its base), at toy size."""
    import shutil

    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from evomm.adapters import diffusers_to_ldm_names

    root.mkdir(parents=True)
    shutil.copytree(SDXL_ZOO / "base", root / "stable-diffusion-xl-base-1.0")
    japanese = StableDiffusionXLPipeline.from_pretrained(SDXL_ZOO / "japanese", local_files_only=True)
    japanese.to(torch.float16).save_pretrained(root / "japanese-stable-diffusion-xl-diffusers", variant="fp16")
    shutil.copyfile(SDXL_ZOO / "fewstep" / "unet" / "diffusion_pytorch_model.safetensors",
                    root / "sdxl_lightning_4step_unet.safetensors")
    base_unet = load_file(str(SDXL_ZOO / "base" / "unet" / "diffusion_pytorch_model.safetensors"))
    gen = torch.Generator().manual_seed(5)
    drifted = {n: (t + 0.01 * torch.randn(t.shape, generator=gen)).half() for n, t in base_unet.items()}
    layers_per_block = json.loads((SDXL_ZOO / "base" / "unet" / "config.json").read_text())["layers_per_block"]
    names = diffusers_to_ldm_names(list(drifted), layers_per_block)
    save_file({names[n]: t for n, t in drifted.items()}, str(root / "juggernautXL_v9.safetensors"))
    (root / "dpo-sdxl-text2image-v1" / "unet").mkdir(parents=True)
    shutil.copyfile(SDXL_ZOO / "base" / "unet" / "config.json", root / "dpo-sdxl-text2image-v1" / "unet" / "config.json")
    gen = torch.Generator().manual_seed(6)
    save_file({n: t + 0.01 * torch.randn(t.shape, generator=gen) for n, t in base_unet.items()},
              str(root / "dpo-sdxl-text2image-v1" / "unet" / "diffusion_pytorch_model.safetensors"))
    return {
        "sdxl_base": root / "stable-diffusion-xl-base-1.0",
        "jsdxl": root / "japanese-stable-diffusion-xl-diffusers",
        "lightning": root / "sdxl_lightning_4step_unet.safetensors",
        "juggernaut": root / "juggernautXL_v9.safetensors",
        "dpo": root / "dpo-sdxl-text2image-v1",
    }


SDXL_UNET_CONFIG = {  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the fields that shape it)
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "center_input_sample": False, "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128, "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}


def _sdxl_unet_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of the real SDXL UNet (built on the meta device: no memory)."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in SDXL_UNET_CONFIG.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    return {name: tuple(t.shape) for name, t in unet.state_dict().items()}


def sparse_sdxl_sources(root: Path) -> dict[str, Path]:
    """The five sources of `pipelines/evosdxl_jp.yml` at the real SDXL UNet's names and shapes, fp16,
    in their real layouts (holes for the data: estimates and planning only)."""
    from evomm.adapters import diffusers_to_ldm_names

    shapes = _sdxl_unet_shapes()

    def pipeline(folder: Path) -> Path:
        (folder / "unet").mkdir(parents=True)
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline",
                                                             "unet": ["diffusers", "UNet2DConditionModel"]}))
        (folder / "unet" / "config.json").write_text(json.dumps(SDXL_UNET_CONFIG))
        _sparse_safetensors(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors", shapes, "F16")
        return folder

    root.mkdir(parents=True)
    lightning = root / "sdxl_lightning_4step_unet.safetensors"
    _sparse_safetensors(lightning, shapes, "F16")
    ldm = diffusers_to_ldm_names(list(shapes), SDXL_UNET_CONFIG["layers_per_block"])
    juggernaut = root / "juggernautXL_v9.safetensors"
    _sparse_safetensors(juggernaut, {ldm[n]: s for n, s in shapes.items()}, "F16")
    dpo = pipeline(root / "dpo-sdxl-text2image-v1")
    (dpo / "model_index.json").unlink()  # a bare unet/ folder
    return {"sdxl_base": pipeline(root / "stable-diffusion-xl-base-1.0"),
            "jsdxl": pipeline(root / "japanese-stable-diffusion-xl-diffusers"),
            "lightning": lightning, "juggernaut": juggernaut, "dpo": dpo}
