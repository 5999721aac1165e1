"""Small stand-ins for the demo's inputs, for tests and screenshots when the zoo is absent.

`tiny_vlm_pair` saves a tiny LLaVA (merged stand-in), a tiny LLaVA parent and a tiny text-only
Mistral parent, each with a character-level tokenizer whose vocabulary is mostly Japanese
kana, so anything they generate is Japanese text. `fabricate_run` writes a RUN_DIR in the
layout of `evomm evolve` with plots drawn by matplotlib from synthetic fitness values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
IMAGE_TOKEN = "<image>"


def japanese_tokenizer(vocab_size: int):
    """A character-level fast tokenizer: specials, kana and a few kanji; `<image>` last."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = list("赤青緑黄白黒色丸四角三形上下左右です。、？ ")
    chars += [chr(c) for c in range(ord("あ"), ord("ん") + 1)] + [chr(c) for c in range(ord("ア"), ord("ン") + 1)]
    chars = list(dict.fromkeys(chars))
    body = chars[: vocab_size - len(SPECIALS) - 1]
    tokens = SPECIALS + body
    tokens += [f"<extra_{i}>" for i in range(vocab_size - 1 - len(tokens))] + [IMAGE_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    return tokenizer


def tiny_llava_processor(vocab_size: int):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=japanese_tokenizer(vocab_size),
        patch_size=8,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def tiny_vlm_pair(out: str | Path) -> dict[str, Path]:
    """Save {"merged", "english_vlm", "japanese_lm"} tiny models under `out`."""
    from evomm.testing.tiny import TINY_VOCAB, save, tiny_llava, tiny_mistral

    out = Path(out)
    vocab = TINY_VOCAB + 4
    paths = {}
    for name, seed, scale in (("merged", 1, 0.02), ("english_vlm", 2, 0.05)):
        paths[name] = save(tiny_llava(seed=seed, scale=scale), out / name)
        tiny_llava_processor(vocab).save_pretrained(out / name)
    paths["japanese_lm"] = save(tiny_mistral(seed=3, scale=0.05), out / "japanese_lm")
    japanese_tokenizer(TINY_VOCAB).save_pretrained(out / "japanese_lm")
    return paths


def example_image(path: str | Path, seed: int = 0, size: int = 64) -> Path:
    """A drawn shape on a plain background, like the toy zoo's images."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 90, 220), (40, 170, 70), (235, 200, 30)]
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(4, size // 2, 2))
    box = (x, y, x + size // 3, y + size // 3)
    colour = colours[seed % len(colours)]
    (draw.ellipse if seed % 2 else draw.rectangle)(box, fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def fabricate_run(run_dir: str | Path, seed: int = 0, generations: int = 8, popsize: int = 6,
                  layers: int = 8) -> Path:
    """Write a RUN_DIR with the files the dashboard reads, plots drawn by matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import yaml

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fitness = np.cumsum(rng.random((generations, popsize)) * 2, axis=0) + 20
    with (run_dir / "evaluations.jsonl").open("w", encoding="utf-8") as handle:
        for g in range(generations):
            for i in range(popsize):
                handle.write(json.dumps({"generation": g, "candidate": i, "fitness": float(fitness[g, i])}) + "\n")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(fitness.max(axis=1), label="best")
    ax.plot(fitness.mean(axis=1), label="mean")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (ROUGE-L)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "fitness.png", dpi=80)
    plt.close(fig)

    weights = rng.random((2, layers))
    fig, ax = plt.subplots(figsize=(6, 2.5))
    image = ax.imshow(weights, aspect="auto", cmap="viridis")
    ax.set_yticks([0, 1], ["english_vlm", "japanese_lm"])
    ax.set_xlabel("layer")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(run_dir / "genome.png", dpi=80)
    plt.close(fig)

    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": "assets/zoo/base",
        "dtype": "float32",
        "models": [
            {"model": "assets/zoo/english_vlm", "parameters": {"weight": [round(float(w), 3) for w in weights[0]]}},
            {"model": "assets/zoo/japanese_lm", "parameters": {"weight": [round(float(w), 3) for w in weights[1]]}},
        ],
        "evomm": {"dfs_path": [int(i) for i in np.flatnonzero(rng.random(2 * layers) > 0.4)]},
    }
    (run_dir / "best_recipe.yml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    names = ["english_vlm", "japanese_lm", "uniform_50", "best_uniform", "ps", "dfs", "ps_dfs"]
    results = {
        "models": {
            name: {
                "rougeL": float(10 + 5 * i + rng.random()),
                "rougeL_strict": float(8 + 5 * i + rng.random()),
                "keyword_acc": float(20 + 8 * i + rng.random()),
            }
            for i, name in enumerate(names)
        }
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    lines = ["# Toy run (fabricated for tests)", "", "| model | ROUGE-L | keyword acc |", "|---|---|---|"]
    lines += [f"| {n} | {s['rougeL']:.1f} | {s['keyword_acc']:.1f} |" for n, s in results["models"].items()]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run_dir


def tiny_sdxl_pipelines(out: str | Path, names: tuple[str, ...] = ("merged", "japanese")) -> dict[str, Path]:
    """Untrained toy-zoo-shaped SDXL pipelines (Japanese tokenizer) saved under `out`."""
    from evomm.zoo_sdxl import data, models

    out = Path(out)
    corpus = [data.japanese_caption(label, t) for label in range(data.NUM_CLASSES) for t in range(len(data.JA_TEMPLATES))]
    tokenizer_dir = out / "_tokenizer"
    models.build_tokenizer(corpus, data.JA_MORPHEMES).save_pretrained(tokenizer_dir)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    paths = {}
    for seed, name in enumerate(names):
        te1, te2 = models.build_text_encoders(tokenizer, models.SMALL, seed)
        pipe = models.assemble_pipeline(
            models.build_vae(models.SMALL, seed), te1, te2, tokenizer, models.build_unet(models.SMALL, seed), "trailing"
        )
        pipe.save_pretrained(out / name, safe_serialization=True)
        paths[name] = out / name
    return paths
