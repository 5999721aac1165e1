"""Tiny checkpoints built from the real transformers / diffusers classes.

Tests, benchmarks and smoke runs need models of the real architectures without a model hub.
Every builder is deterministic from its seed, so a "fine-tune" is its base plus a small seeded
perturbation: models built from the same base share it, as the merge methods assume.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_VOCAB = 128


def tiny_mistral_config(vocab_size: int = TINY_VOCAB, num_layers: int = 4, hidden: int = 32):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=256,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _perturb_(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Add seeded noise to every parameter: a stand-in for fine-tuning away from a base."""
    if scale == 0:
        return
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)


def tiny_mistral(seed: int = 0, base_seed: int = 0, scale: float = 0.0, **config_kwargs):
    """A MistralForCausalLM: `base_seed` fixes the shared base, `seed`/`scale` the drift."""
    from transformers import MistralForCausalLM

    torch.manual_seed(base_seed)
    model = MistralForCausalLM(tiny_mistral_config(**config_kwargs)).eval()
    _perturb_(model, seed, scale)
    return model


def tiny_clip_vision_config(image_size: int = 32, hidden: int = 32):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        projection_dim=hidden,
    )


def tiny_llava(
    seed: int = 0,
    base_seed: int = 0,
    scale: float = 0.0,
    vocab_size: int = TINY_VOCAB + 4,
    num_layers: int = 4,
    next_version: bool = False,
):
    """A LlavaForConditionalGeneration (or LLaVA-NeXT) whose decoder is `tiny_mistral`'s base.

    The language model starts from the same base weights as `tiny_mistral(base_seed=...)`,
    extended by `vocab_size - TINY_VOCAB` extra rows (LLaVA-1.6-Mistral has 64 more rows than
    Mistral), then drifts by `scale`.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig
    from transformers import LlavaNextForConditionalGeneration

    text_config = tiny_mistral_config(vocab_size=vocab_size, num_layers=num_layers)
    common = dict(
        vision_config=tiny_clip_vision_config(),
        text_config=text_config,
        image_token_index=vocab_size - 1,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(base_seed + 1000)
    if next_version:
        config = LlavaNextConfig(image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]], **common)
        model = LlavaNextForConditionalGeneration(config).eval()
    else:
        model = LlavaForConditionalGeneration(LlavaConfig(**common)).eval()
    # share the decoder base with tiny_mistral(base_seed)
    base = tiny_mistral(base_seed=base_seed, num_layers=num_layers).state_dict()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, src in base.items():
            # transformers 5 in-memory names: model.language_model.X and lm_head.weight
            target = params.get(name.replace("model.", "model.language_model.", 1), params.get(name))
            if target is None:
                continue
            rows = min(src.shape[0], target.shape[0])
            target[:rows].copy_(src[:rows])
    _perturb_(model, seed, scale)
    return model


def save(model, path: str | Path) -> Path:
    """Save as safetensors (the only format evomm reads by default)."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    return path


def tiny_sdxl_unet_config(cross_attention_dim: int = 32, text_embeds_dim: int = 32) -> dict:
    """An SDXL-shaped UNet config (text_time conditioning, attention in the deeper blocks)."""
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1),
        attention_head_dim=(2, 4),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        # pooled text embeds + 6 micro-conditioning values * addition_time_embed_dim
        projection_class_embeddings_input_dim=text_embeds_dim + 6 * 8,
        use_linear_projection=True,
    )


def tiny_sdxl_unet(seed: int = 0, base_seed: int = 0, scale: float = 0.0):
    """A diffusers UNet2DConditionModel with an SDXL-style config."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(base_seed)
    model = UNet2DConditionModel(**tiny_sdxl_unet_config()).eval()
    _perturb_(model, seed, scale)
    return model
