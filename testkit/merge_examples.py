"""Small example checkpoints for `evomm merge`: a base, fine-tunes, tokenizers, single files.

Used by the tests, `assets/make_merge_example.py` (the README's first command) and the
merge benchmark. Everything is built from the real transformers / diffusers classes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from testkit.tiny import save, tiny_llava, tiny_mistral, tiny_sdxl_unet


def write_tokenizer(path: str | Path, vocab_size: int, prefix: str = "tok") -> Path:
    """A word-level fast tokenizer whose token i is `<prefix>i` (specials at 0..2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i in range(len(specials), vocab_size):
        vocab[f"{prefix}{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<unk>")
    fast.save_pretrained(str(path))
    return Path(path)


def make_llm_family(out: str | Path, n_finetunes: int = 2, scale: float = 0.02, tokenizer: bool = True,
                    **config_kwargs) -> dict[str, Path]:
    """`base` plus `ft1..ftN` tiny Mistral checkpoints sharing the base, under `out`."""
    out = Path(out)
    paths = {"base": save(tiny_mistral(0, base_seed=0, scale=0.0, **config_kwargs), out / "base")}
    for i in range(1, n_finetunes + 1):
        paths[f"ft{i}"] = save(tiny_mistral(seed=i, base_seed=0, scale=scale, **config_kwargs), out / f"ft{i}")
    if tokenizer:
        vocab = config_kwargs.get("vocab_size", 128)
        for path in paths.values():
            write_tokenizer(path, vocab)
    return paths


def make_vlm(out: str | Path, seed: int = 7, scale: float = 0.02, next_version: bool = False,
             tokenizer: bool = True) -> Path:
    """A tiny LLaVA (or LLaVA-NeXT) whose decoder shares `make_llm_family`'s base."""
    path = save(tiny_llava(seed=seed, base_seed=0, scale=scale, next_version=next_version), out)
    if tokenizer:
        write_tokenizer(path, 132)
    return path


def make_unet_family(out: str | Path, n_finetunes: int = 2, scale: float = 0.02) -> dict[str, Path]:
    out = Path(out)
    paths = {"base": save(tiny_sdxl_unet(0, base_seed=0), out / "unet_base")}
    for i in range(1, n_finetunes + 1):
        paths[f"ft{i}"] = save(tiny_sdxl_unet(seed=i, base_seed=0, scale=scale), out / f"unet_ft{i}")
    return paths


def save_single_file_unet(unet, path: str | Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Save a diffusers UNet as an SDXL single-file checkpoint (`model.diffusion_model.*`)."""
    from safetensors.torch import save_file

    from evomm.adapters.sdxl import diffusers_to_ldm_names

    state = unet.state_dict()
    names = diffusers_to_ldm_names(list(state), unet.config.layers_per_block)
    data = {names[k]: v.contiguous() for k, v in state.items()}
    data.update(extra or {})
    save_file(data, str(path))
    return Path(path)
