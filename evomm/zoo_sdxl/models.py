"""Architectures of the toy SDXL zoo: tokenizers, text encoders, UNet, VAE, open_clip scorer.

Every part is the real class SDXL uses (CLIPTokenizer, CLIPTextModel,
CLIPTextModelWithProjection, UNet2DConditionModel with `text_time` conditioning,
AutoencoderKL, EulerDiscreteScheduler), only tiny, so merged toy models exercise exactly
the code paths of real SDXL checkpoints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

CONTEXT_LENGTH = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="leading",
)


@dataclass(frozen=True)
class ZooSizes:
    """Widths of every part; `full` is what ships, `small` is for smoke tests."""

    unet_channels: tuple[int, int] = (32, 64)
    unet_heads: tuple[int, int] = (2, 4)
    te1_width: int = 32
    te2_width: int = 64
    te_layers: int = 2
    pooled_dim: int = 32
    vae_channels: tuple[int, int] = (16, 32)
    clip_embed: int = 64
    clip_vision: dict = field(default_factory=lambda: dict(width=96, layers=3, head_width=32, patch_size=4))
    clip_text: dict = field(default_factory=lambda: dict(width=64, heads=4, layers=2))

    @property
    def cross_attention_dim(self) -> int:
        return self.te1_width + self.te2_width


FULL = ZooSizes()
SMALL = ZooSizes(
    unet_channels=(8, 16),
    unet_heads=(1, 2),
    te1_width=8,
    te2_width=16,
    te_layers=2,
    pooled_dim=8,
    vae_channels=(8, 8),
    clip_embed=16,
    clip_vision=dict(width=16, layers=1, head_width=8, patch_size=8),
    clip_text=dict(width=16, heads=2, layers=1),
)


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (GPT-2 / CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _learn_merges(words: Counter) -> list[tuple[str, str]]:
    """Greedy BPE until every corpus word is one token (ties broken by the pair text).

    A word ending in a space stands for a word-internal piece (no end-of-word marker).
    """
    seqs = {
        w: tuple(w[:-1]) if w.endswith(" ") else tuple(w[:-1]) + (w[-1] + "</w>",) for w in words
    }
    merges = []
    while True:
        pairs: Counter = Counter()
        for w, seq in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = tuple(out)


def build_tokenizer(corpus: list[str], morphemes: list[str] | None = None):
    """A CLIPTokenizer whose byte-level BPE covers `corpus` words as single tokens.

    Every byte stays encodable (the 512 byte symbols are in the vocabulary), so text in any
    language tokenizes; only corpus words get whole-word tokens. Japanese has no spaces, so
    for it pass `morphemes`: merges are then learnt on those pieces (word-final and
    word-internal), and a caption splits into morpheme tokens. The caller must save and
    reload it with the pipeline: rebuilding can renumber tokens.
    """
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    probe = CLIPTokenizer(vocab={BOS: 0, EOS: 1}, merges=[])
    backend = probe.backend_tokenizer
    words: Counter = Counter()
    for text in morphemes or corpus:
        normalized = backend.normalizer.normalize_str(text)
        pieces = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
        words.update(pieces)
        if morphemes:
            words.update(piece + " " for piece in pieces)
    merges = _learn_merges(words)
    vocab: dict[str, int] = {}
    for token in alphabet + [a + "</w>" for a in alphabet] + [a + b for a, b in merges] + [BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=[(a, b) for a, b in merges],
        model_max_length=CONTEXT_LENGTH,
    )


def text_encoder_configs(tokenizer, sizes: ZooSizes):
    """Configs of SDXL's two text encoders, token ids tied to `tokenizer` (pooling needs EOS)."""
    from transformers import CLIPTextConfig

    common = dict(
        vocab_size=len(tokenizer),
        num_hidden_layers=sizes.te_layers,
        max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="quick_gelu",
    )
    te1 = CLIPTextConfig(hidden_size=sizes.te1_width, intermediate_size=sizes.te1_width * 2,
                         num_attention_heads=2, projection_dim=sizes.te1_width, **common)
    te2 = CLIPTextConfig(hidden_size=sizes.te2_width, intermediate_size=sizes.te2_width * 2,
                         num_attention_heads=4 if sizes.te2_width >= 32 else 2,
                         projection_dim=sizes.pooled_dim, **common)
    return te1, te2


def build_text_encoders(tokenizer, sizes: ZooSizes, seed: int):
    """Two frozen random CLIP text encoders (SDXL reads hidden_states[-2] of both + pooled of #2)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    c1, c2 = text_encoder_configs(tokenizer, sizes)
    torch.manual_seed(seed)
    te1 = CLIPTextModel(c1).eval().requires_grad_(False)
    te2 = CLIPTextModelWithProjection(c2).eval().requires_grad_(False)
    return te1, te2


def unet_config(sizes: ZooSizes, latent_size: int = 16) -> dict:
    return dict(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=sizes.unet_channels,
        layers_per_block=1,
        transformer_layers_per_block=(1, 1),
        attention_head_dim=sizes.unet_heads,
        cross_attention_dim=sizes.cross_attention_dim,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=sizes.pooled_dim + 6 * 8,
        use_linear_projection=True,
    )


def build_unet(sizes: ZooSizes, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**unet_config(sizes))


def build_vae(sizes: ZooSizes, seed: int, scaling_factor: float = 1.0):
    """A 2x-downsampling AutoencoderKL: 32x32 RGB <-> 4x16x16 latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=sizes.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=scaling_factor,
        force_upcast=False,
    )


def scheduler(timestep_spacing: str = "leading"):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(**{**SCHEDULER_CONFIG, "timestep_spacing": timestep_spacing})


def assemble_pipeline(vae, te1, te2, tokenizer, unet, timestep_spacing: str = "leading"):
    """A StableDiffusionXLPipeline over toy parts (both encoders read the same tokenizer)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler(timestep_spacing),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def open_clip_config(sizes: ZooSizes) -> dict:
    """A 32x32 ViT open_clip config using open_clip's bundled BPE (49,408 tokens)."""
    return {
        "embed_dim": sizes.clip_embed,
        "vision_cfg": {"image_size": 32, **sizes.clip_vision},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, **sizes.clip_text},
    }


CLIP_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                   "resize_mode": "shortest"}


def build_open_clip(sizes: ZooSizes, seed: int):
    """An open_clip CLIP from the config (registered in memory, no hub)."""
    import open_clip

    torch.manual_seed(seed)
    cfg = open_clip_config(sizes)
    return open_clip.model.CLIP(**cfg)
