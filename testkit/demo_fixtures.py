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
    from testkit.tiny import TINY_VOCAB, save, tiny_llava, tiny_mistral

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


class _FakeDFSSpace:
    """Just enough of a DFS search space for `evomm.search.plots.plot_genome`."""

    def __init__(self, spec: dict):
        self.spec = spec

    def decode(self, x):
        return self.spec

    def labels(self):
        return [f"x{i}" for i in range(8)]


class _FakePSSpace(_FakeDFSSpace):
    """A PS space adds the per-layer table the heatmap shows."""

    def __init__(self, spec: dict, rows: list[str], matrix: np.ndarray):
        super().__init__(spec)
        self.rows, self.matrix = rows, matrix

    def layer_table(self, x):
        return self.rows, self.matrix


def fabricate_run(run_dir: str | Path, seed: int = 0, generations: int = 6, popsize: int = 4,
                  layers: int = 4, plots: bool = True) -> Path:
    """A finished multi-stage RUN_DIR (ps, dfs, ps_dfs) in the layout of `evomm evolve`.

    The numbers are synthetic; the plots (skipped with `plots=False`, they take seconds) come
    from the engine's own plotting code.
    """
    import yaml

    from evomm.search.plots import plot_fitness, plot_genome
    from evomm.search.run import GenerationSummary

    run_dir = Path(run_dir)
    rng = np.random.default_rng(seed)
    sources = ["assets/zoo/english_vlm", "assets/zoo/japanese_lm"]
    summary = {}
    for stage_index, stage in enumerate(("ps", "dfs", "ps_dfs")):
        out = run_dir / stage
        out.mkdir(parents=True, exist_ok=True)
        fitness = np.sort(rng.random((generations, popsize)), axis=0) * 20 + 20 + 5 * stage_index
        history, best_so_far = [], -np.inf
        with (out / "evaluations.jsonl").open("w", encoding="utf-8") as handle:
            for g in range(generations):
                for i in range(popsize):
                    handle.write(json.dumps({"generation": g, "index": i, "fitness": float(fitness[g, i])}) + "\n")
                best_so_far = max(best_so_far, float(fitness[g].max()))
                history.append(GenerationSummary(g, float(fitness[g].max()), float(fitness[g].mean()), best_so_far,
                                                 0, (g + 1) * popsize))
        if stage == "ps":
            weights = rng.random((2, layers)).round(3)
            spec = {
                "merge_method": "task_arithmetic",
                "base_model": "assets/zoo/base",
                "dtype": "float32",
                "models": [{"model": src, "parameters": {"weight": w.tolist()}} for src, w in zip(sources, weights)],
            }
            space = _FakePSSpace(spec, [f"{Path(s).name}.weight" for s in sources], weights)
        else:
            stage_sources = [sources[0], sources[1]] if stage == "dfs" else [f"{run_dir}/ps/model", sources[1]]
            path = [[int(i % 2), int(i // 2)] for i in range(2 * layers) if rng.random() > 0.3]
            scales = [round(float(v), 2) for v in rng.uniform(0.6, 1.4, len(path))]
            spec = {"type": "dfs", "sources": stage_sources, "path": path, "scales": scales}
            space = _FakeDFSSpace(spec)
        if plots:
            plot_fitness(history, out / "fitness.png", title=f"{stage}: fitness")
            plot_genome(space, np.zeros(8), out / "genome.png", title=f"{stage}: best genome")
        (out / "best_recipe.yml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        result = {"stage": stage, "best_fitness": best_so_far, "evaluations": generations * popsize,
                  "best_recipe": str(out / "best_recipe.yml"), "model": None}
        (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        summary[stage] = result
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")

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
    lines = ["# Toy run (synthetic numbers, for tests)", "", "| model | ROUGE-L | keyword acc |", "|---|---|---|"]
    lines += [f"| {n} | {s['rougeL']:.1f} | {s['keyword_acc']:.1f} |" for n, s in results["models"].items()]
    lines += ["", "![fitness](ps/fitness.png)"]
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


def short_evolution(run_dir: str | Path, work_dir: str | Path, generations: int = 3, popsize: int = 4) -> Path:
    """A real `evomm evolve` run in seconds: PS then PS+DFS over tiny Mistrals, synthetic fitness.

    The fitness (`synthetic_logits`: closeness of the candidate's logits to a target model's)
    needs no data, so the engine writes a complete multi-stage RUN_DIR — evaluations, plots,
    best recipes, exported models — as a toy evolution would.
    """
    import yaml

    from evomm.cli import main
    from testkit.tiny import save, tiny_mistral

    work_dir = Path(work_dir)
    sources = {
        "base": str(save(tiny_mistral(base_seed=0), work_dir / "base")),
        "english": str(save(tiny_mistral(seed=1, scale=0.02), work_dir / "english")),
        "japanese": str(save(tiny_mistral(seed=2, scale=0.02), work_dir / "japanese")),
    }
    fitness = {"metric": "synthetic_logits", "options": {"target": "english"}}
    config = {
        "seed": 0,
        "sources": sources,
        "optimizer": {"name": "cmaes", "popsize": popsize, "generations": generations},
        "stages": [
            {"name": "ps", "fitness": fitness,
             "space": {"type": "ps", "method": "task_arithmetic", "base_model": "base",
                       "models": ["english", "japanese"], "layers_per_group": 1}},
            {"name": "ps_dfs", "fitness": fitness,
             "space": {"type": "dfs", "models": ["stage:ps", "japanese"], "repeats": 1, "max_length": 6}},
        ],
    }
    config_path = work_dir / "evolve.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    if main(["evolve", str(config_path), "--out", str(run_dir), "--no-progress"]) != 0:
        raise RuntimeError("evomm evolve failed")
    return Path(run_dir)
