"""Images of coloured shapes and their captions in English and Japanese.

The toy SDXL zoo needs a world small enough to learn on one CPU core in minutes yet rich
enough that a wrong colour or shape is visible and measurable: 6 colours x 3 shapes drawn at
random places and sizes on a dark background, each with several phrasings per language.
Japanese prompts carry an English gloss (same colour and shape) so an English-only CLIP can
score images made from Japanese prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IMAGE_SIZE = 32

# name, RGB in [0, 1], Japanese attributive form
COLOURS: list[tuple[str, tuple[float, float, float], str]] = [
    ("red", (0.95, 0.15, 0.12), "赤い"),
    ("green", (0.15, 0.80, 0.20), "緑の"),
    ("blue", (0.15, 0.30, 0.95), "青い"),
    ("yellow", (0.95, 0.90, 0.15), "黄色い"),
    ("purple", (0.65, 0.20, 0.85), "紫の"),
    ("white", (0.95, 0.95, 0.95), "白い"),
]
SHAPES: list[tuple[str, str]] = [("circle", "丸"), ("square", "四角"), ("triangle", "三角")]

EN_TEMPLATES = ["a {c} {s}", "a picture of a {c} {s}", "a {c} {s} on a dark background"]
# The Japanese fine-tune sees all four; fitness uses the first two, held-out reports the last two.
JA_TEMPLATES = ["{c}{s}", "{c}{s}の絵", "暗い背景に{c}{s}", "{c}{s}のイラスト"]
JA_FITNESS_TEMPLATES = (0, 1)
JA_HELDOUT_TEMPLATES = (2, 3)

NUM_CLASSES = len(COLOURS) * len(SHAPES)

# Japanese is written without spaces: the Japanese tokenizer learns these pieces as tokens.
JA_MORPHEMES = [c[2] for c in COLOURS] + [s[1] for s in SHAPES] + ["の", "絵", "暗い", "背景", "に", "イラスト"]


@dataclass(frozen=True)
class Prompt:
    """One prompt with the class it names and the English gloss used for CLIP scoring."""

    text: str
    gloss: str
    label: int


def class_names(label: int) -> tuple[int, int]:
    """Label -> (colour index, shape index)."""
    return divmod(label, len(SHAPES))


def english_caption(label: int, template: int = 0) -> str:
    ci, si = class_names(label)
    return EN_TEMPLATES[template].format(c=COLOURS[ci][0], s=SHAPES[si][0])


def japanese_caption(label: int, template: int = 0) -> str:
    ci, si = class_names(label)
    return JA_TEMPLATES[template].format(c=COLOURS[ci][2], s=SHAPES[si][1])


def japanese_prompts(templates: tuple[int, ...], repeats: int = 1) -> list[Prompt]:
    """Every class in each given phrasing, `repeats` times (each copy gets its own noise seed)."""
    out = []
    for _ in range(repeats):
        for t in templates:
            for label in range(NUM_CLASSES):
                out.append(Prompt(japanese_caption(label, t), english_caption(label, 0), label))
    return out


def english_prompts(templates: tuple[int, ...] = (0,), repeats: int = 1) -> list[Prompt]:
    out = []
    for _ in range(repeats):
        for t in templates:
            for label in range(NUM_CLASSES):
                text = english_caption(label, t)
                out.append(Prompt(text, english_caption(label, 0), label))
    return out


def _shape_mask(shape: int, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == 0:  # circle
        return dx * dx + dy * dy <= r * r
    if shape == 1:  # square
        return np.maximum(np.abs(dx), np.abs(dy)) <= r * 0.85
    # upward triangle: apex at top, base at cy + r
    depth = (dy + r) / (2 * r)
    return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= depth * r * 1.1)


def render(label: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One HxWx3 float image in [0, 1]; rendered at 2x and averaged down for soft edges."""
    ci, si = class_names(label)
    big = size * 2
    r = rng.uniform(0.20, 0.34) * big
    cx, cy = rng.uniform(r + 1, big - r - 1, size=2)
    background = rng.uniform(0.05, 0.22) + rng.uniform(-0.03, 0.03, size=3)
    colour = np.clip(np.array(COLOURS[ci][1]) + rng.uniform(-0.06, 0.06, size=3), 0, 1)
    img = np.broadcast_to(background, (big, big, 3)).copy()
    img[_shape_mask(si, cx, cy, r, big)] = colour
    img = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    return np.clip(img, 0, 1).astype(np.float32)


def make_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images as an (n, 3, H, W) tensor in [-1, 1] with balanced class labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % NUM_CLASSES
    rng.shuffle(labels)
    images = np.stack([render(int(lab), rng) for lab in labels])
    x = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
    return x.contiguous(), torch.from_numpy(labels).long()


FITNESS_SEED_REPEATS = 5  # 18 classes x 2 phrasings x 5 = 180 prompts per candidate
HELDOUT_SEED_REPEATS = 5


def prompt_sets() -> dict:
    """The prompt file the toy SDXL pipeline reads (`fitness.dataset`).

    `fitness`: Japanese prompts in the first two phrasings, each class 5 times (each copy
    gets its own noise seed, since the sampler seeds prompt i with seed + i); `heldout`: the
    other two phrasings, 5 times, scored with a different noise seed in the report;
    `english`: the English captions (for checking the English models).
    """
    def items(prompts: list[Prompt]) -> list[dict]:
        return [{"text": p.text, "gloss": p.gloss, "label": p.label} for p in prompts]

    return {
        "about": "toy SDXL zoo prompts: Japanese text for the generator, English gloss for the scorer",
        "splits": {
            "fitness": items(japanese_prompts(JA_FITNESS_TEMPLATES, FITNESS_SEED_REPEATS)),
            "heldout": items(japanese_prompts(JA_HELDOUT_TEMPLATES, HELDOUT_SEED_REPEATS)),
            "english": items(english_prompts((0,), 1)),
        },
    }
