"""The toy world: procedurally drawn scenes with English and Japanese questions about them.

Each item is one small image (coloured shapes in the quadrants of a plain background, or a
traffic light) and one question of a known *type* (colour, shape, position, count, signal),
asked in English and in Japanese. Answers are full sentences that restate the scene, so that
ROUGE-L rewards getting the content right rather than only the sentence frame; every answer
also carries the key words a correct answer must name and the distractors (the other values
of the asked attribute) it must not name.

A Japanese touch: a lit green traffic light is 青 (blue) in Japanese, as Japanese speakers
call it, while a green shape is 緑.

Everything is deterministic from a seed, and the splits never share an image: a scene's
exact drawing parameters are its identity, and a scene drawn for one split is never drawn
again for another.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from evomm.errors import DatasetError

IMAGE_SIZE = 32
SPLITS = ("train", "fitness", "test")
QUESTION_TYPES = ("colour", "shape", "position", "count", "signal")

# name, Japanese noun (the key word), Japanese adjective form, RGB
COLOURS = {
    "red": ("赤", "赤い", (215, 40, 40)),
    "blue": ("青", "青い", (40, 70, 215)),
    "green": ("緑", "緑の", (40, 160, 60)),
    "yellow": ("黄色", "黄色い", (230, 195, 20)),
    "purple": ("紫", "紫の", (135, 55, 175)),
    "orange": ("オレンジ", "オレンジ色の", (245, 135, 25)),
}
# name -> plural, Japanese, Japanese key word (円 / 四角 / 三角 / 十字)
SHAPES = {
    "circle": ("circles", "円", "円"),
    "square": ("squares", "四角形", "四角"),
    "triangle": ("triangles", "三角形", "三角"),
    "cross": ("crosses", "十字", "十字"),
}
POSITIONS = {  # quadrant -> English, Japanese
    (0, 0): ("top left", "左上"),
    (1, 0): ("top right", "右上"),
    (0, 1): ("bottom left", "左下"),
    (1, 1): ("bottom right", "右下"),
}
COUNTS = {1: ("one", "一つ"), 2: ("two", "二つ"), 3: ("three", "三つ"), 4: ("four", "四つ")}
BACKGROUNDS = {
    "white": ("白い", (245, 245, 245)),
    "grey": ("灰色の", (190, 190, 190)),
    "beige": ("ベージュの", (235, 220, 190)),
    "pale blue": ("水色の", (200, 225, 245)),
}
# lamp colour -> (Japanese name as said of a signal, English advice, Japanese advice)
SIGNALS = {
    "red": ("赤", "so you must stop", "止まります"),
    "yellow": ("黄色", "so you should slow down", "注意します"),
    "green": ("青", "so you may go", "進めます"),
}

QUESTIONS = {
    "colour": ("What colour is the shape?", "図形は何色ですか？"),
    "shape": ("What shape is drawn?", "何の形が描かれていますか？"),
    "position": ("Where is the shape?", "図形はどこにありますか？"),
    "count": ("How many shapes are there?", "図形はいくつありますか？"),
    "signal": ("What colour is the traffic light?", "信号は何色ですか？"),
}
CAPTION_QUESTION = ("Describe the image.", "画像を説明してください。")


@dataclass(frozen=True)
class Scene:
    """Everything needed to redraw an image exactly; equal scenes are equal images."""

    kind: str  # "shapes" | "signal"
    background: str
    colour: str = ""  # shapes: fill colour; signal: the lit lamp
    shape: str = ""  # shapes: the shape; signal: "horizontal" | "vertical"
    cells: tuple[tuple[int, int], ...] = ()  # occupied quadrants, sorted
    jitter: tuple[tuple[int, int, int], ...] = ()  # per cell: dx, dy, size


@dataclass(frozen=True)
class Item:
    """One image with one question type; English and Japanese texts derive from it."""

    scene: Scene
    qtype: str


# ----------------------------------------------------------------------------- drawing


def draw(scene: Scene) -> Image.Image:
    """Render a scene as an RGB image of IMAGE_SIZE x IMAGE_SIZE pixels."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[scene.background][1])
    pen = ImageDraw.Draw(image)
    if scene.kind == "signal":
        _draw_signal(pen, scene)
        return image
    half = IMAGE_SIZE // 2
    fill = COLOURS[scene.colour][2]
    for (cx, cy), (dx, dy, size) in zip(scene.cells, scene.jitter):
        x0 = cx * half + (half - size) // 2 + dx
        y0 = cy * half + (half - size) // 2 + dy
        _draw_shape(pen, scene.shape, x0, y0, size, fill)
    return image


def _draw_shape(pen: ImageDraw.ImageDraw, shape: str, x0: int, y0: int, size: int, fill) -> None:
    x1, y1 = x0 + size - 1, y0 + size - 1
    if shape == "circle":
        pen.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        pen.rectangle([x0 + 1, y0 + 1, x1 - 1, y1 - 1], fill=fill)
    elif shape == "triangle":
        pen.polygon([(x0 + size / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        third = size // 3
        pen.rectangle([x0 + third, y0, x1 - third, y1], fill=fill)
        pen.rectangle([x0, y0 + third, x1, y1 - third], fill=fill)
    else:
        raise DatasetError(f"unknown shape {shape!r}")


def _draw_signal(pen: ImageDraw.ImageDraw, scene: Scene) -> None:
    """A three-lamp signal; horizontal ones (green, yellow, red from the left) as in Japan."""
    dx, dy, _ = scene.jitter[0]
    horizontal = scene.shape == "horizontal"
    left, top = (3 + dx, 11 + dy) if horizontal else (11 + dx, 3 + dy)
    width, height = (25, 9) if horizontal else (9, 25)
    pen.rectangle([left, top, left + width, top + height], fill=(40, 40, 40))
    lamps = ("green", "yellow", "red") if horizontal else ("red", "yellow", "green")
    for index, lamp in enumerate(lamps):
        rgb = COLOURS[lamp][2]
        colour = rgb if lamp == scene.colour else tuple(c // 4 + 20 for c in rgb)
        x, y = (left + 2 + index * 8, top + 1) if horizontal else (left + 1, top + 2 + index * 8)
        pen.ellipse([x, y, x + 7, y + 7], fill=colour)


# ----------------------------------------------------------------------------- texts


def describe(scene: Scene, lang: str) -> str:
    """A one-sentence description of the scene (the 'caption' and the text-only context)."""
    if scene.kind == "signal":
        if lang == "en":
            return f"A traffic light on a {scene.background} background; the {scene.colour} light is on."
        return f"{BACKGROUNDS[scene.background][0]}背景に信号があり、{SIGNALS[scene.colour][0]}信号が点いています。"
    return (
        f"{_summary_en(scene)} on a {scene.background} background."
        if lang == "en"
        else f"{BACKGROUNDS[scene.background][0]}背景に、{_summary_ja(scene)}。"
    )


def _summary_en(scene: Scene) -> str:
    n = len(scene.cells)
    shape = scene.shape if n == 1 else SHAPES[scene.shape][0]
    where = " and ".join(f"the {POSITIONS[c][0]}" for c in scene.cells)
    count = "one" if n == 1 else COUNTS[n][0]
    return f"{count.capitalize()} {scene.colour} {shape} at {where}"


def _summary_ja(scene: Scene) -> str:
    where = "と".join(POSITIONS[c][1] for c in scene.cells)
    colour_adj = COLOURS[scene.colour][1]
    return f"{where}に{colour_adj}{SHAPES[scene.shape][1]}が{COUNTS[len(scene.cells)][1]}あります"


def markup(scene: Scene) -> str:
    """The scene in a language-neutral notation (like structured data in a pretraining corpus).

    Both the English and the Japanese QA of the shared base read scenes in this notation, so
    an image encoder that learns to look like it to the base is readable in both languages.
    Codes: B background, L lit signal lamp + H/V orientation, C colour, S shape, N count,
    P occupied quadrant.
    """
    code = lambda prefix, options, value: f"{prefix}{sorted(options).index(value) + 1}"  # noqa: E731
    parts = [code("B", BACKGROUNDS, scene.background)]
    if scene.kind == "signal":
        parts += [code("L", SIGNALS, scene.colour), scene.shape[0].upper()]
    else:
        parts += [code("C", COLOURS, scene.colour), code("S", SHAPES, scene.shape), f"N{len(scene.cells)}"]
        parts += [code("P", POSITIONS, cell) for cell in scene.cells]
    return "[ " + " ".join(parts) + " ]"


def question(item: Item, lang: str) -> str:
    return QUESTIONS[item.qtype][0 if lang == "en" else 1]


def answer(item: Item, lang: str) -> str:
    """A full-sentence answer: the asked value first, then the scene restated."""
    scene, qtype = item.scene, item.qtype
    if qtype == "signal":
        name_ja, advice_en, advice_ja = SIGNALS[scene.colour]
        if lang == "en":
            return f"The light is {scene.colour}. The traffic light shows {scene.colour}, {advice_en}."
        return f"{name_ja}です。信号が{name_ja}なので、{advice_ja}。"
    n = len(scene.cells)
    if lang == "en":
        value = {
            "colour": f"It is {scene.colour}.",
            "shape": f"It is a {scene.shape}." if n == 1 else f"They are {SHAPES[scene.shape][0]}.",
            "position": f"It is at the {POSITIONS[scene.cells[0]][0]}.",
            "count": f"There {'is' if n == 1 else 'are'} {COUNTS[n][0]}.",
        }[qtype]
        return f"{value} I see {_summary_en(scene)[0].lower()}{_summary_en(scene)[1:]}."
    value = {
        "colour": COLOURS[scene.colour][0],
        "shape": SHAPES[scene.shape][1],
        "position": POSITIONS[scene.cells[0]][1],
        "count": COUNTS[n][1],
    }[qtype]
    return f"{value}です。{_summary_ja(scene)}。"


def keywords(item: Item, lang: str) -> tuple[list[str], list[str]]:
    """(key words a correct answer names, distractors it must not name) for the asked value."""
    scene, qtype = item.scene, item.qtype
    en = lang == "en"
    if qtype == "signal":
        values = {c: (c if en else SIGNALS[c][0]) for c in SIGNALS}
        key = scene.colour
    elif qtype == "colour":
        values = {c: (c if en else COLOURS[c][0]) for c in COLOURS}
        key = scene.colour
    elif qtype == "shape":
        values = {s: (s if en else SHAPES[s][2]) for s in SHAPES}
        key = scene.shape
    elif qtype == "position":
        values = {p: (POSITIONS[p][0] if en else POSITIONS[p][1]) for p in POSITIONS}
        key = scene.cells[0]
    else:
        values = {n: (COUNTS[n][0] if en else COUNTS[n][1]) for n in COUNTS}
        key = len(scene.cells)
    return [values[key]], [v for k, v in values.items() if k != key]


def chance_level(qtype: str) -> float:
    """Key-word accuracy (%) of a uniform random guess for a question type."""
    return 100.0 / {"colour": len(COLOURS), "shape": len(SHAPES), "position": len(POSITIONS),
                    "count": len(COUNTS), "signal": len(SIGNALS)}[qtype]


# ----------------------------------------------------------------------------- sampling


def sample_item(rng: random.Random, qtype: str) -> Item:
    """Draw a random scene that can answer a question of type `qtype`."""
    background = rng.choice(sorted(BACKGROUNDS))
    if qtype == "signal":
        scene = Scene("signal", background, colour=rng.choice(sorted(SIGNALS)), shape=rng.choice(("horizontal", "vertical")),
                      jitter=((rng.randint(-3, 3), rng.randint(-2, 2), 0),))
        return Item(scene, qtype)
    n = 1 if qtype == "position" else rng.randint(1, 4)
    cells = tuple(sorted(rng.sample(sorted(POSITIONS), n), key=lambda c: (c[1], c[0])))
    jitter = tuple((rng.randint(-2, 2), rng.randint(-2, 2), rng.randint(10, 13)) for _ in cells)
    scene = Scene("shapes", background, colour=rng.choice(sorted(COLOURS)),
                  shape=rng.choice(sorted(SHAPES)), cells=cells, jitter=jitter)
    return Item(scene, qtype)


def make_splits(sizes: dict[str, int], seed: int = 0) -> dict[str, list[Item]]:
    """Items per split, balanced over question types; no scene appears in two splits.

    The held-out splits (fitness, test) also never repeat a scene within themselves; the
    training split may (traffic lights have only a few hundred distinct drawings).
    """
    rng = random.Random(seed)
    owner: dict[Scene, str] = {}
    splits: dict[str, list[Item]] = {}
    for split in SPLITS:
        items: list[Item] = []
        for index in range(sizes.get(split, 0)):
            qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
            for _ in range(1000):
                item = sample_item(rng, qtype)
                taken = owner.get(item.scene)
                if taken is None or (taken == split == "train"):
                    break
            else:
                raise DatasetError(f"ran out of distinct {qtype} scenes for split {split!r}; ask for fewer items")
            owner[item.scene] = split
            items.append(item)
        rng.shuffle(items)
        splits[split] = items
    return splits


def records(item: Item, image_path: str) -> Iterator[dict]:
    """The JSONL records (one per language) of an item."""
    for lang in ("en", "ja"):
        keys, distractors = keywords(item, lang)
        yield {
            "image": image_path,
            "question": question(item, lang),
            "answer": answer(item, lang),
            "type": item.qtype,
            "keywords": keys,
            "distractors": distractors,
            "lang": lang,
        }


def write_dataset(out_dir: str | Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """Write `{split}.jsonl` + `images/*.png` (the generic JSONL+PNG format) under out_dir."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for split, items in make_splits(sizes, seed).items():
        if not items:
            continue
        lines = []
        for index, item in enumerate(items):
            rel = f"images/{split}_{index:05d}.png"
            draw(item.scene).save(out / rel)
            lines.extend(json.dumps(r, ensure_ascii=False) for r in records(item, rel))
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "meta.json").write_text(json.dumps({"seed": seed, "sizes": sizes}, indent=1))
    return out


def scene_to_json(scene: Scene) -> dict:
    return asdict(scene)
