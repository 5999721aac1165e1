"""Fitness `sdxl_clip_score`: mean CLIP image-prompt score of a merged SDXL UNet's images.

Each candidate's UNet is merged in memory into one `SDXLCandidatePipeline` (text encoders and
tokenizers from the source named by `options.pipeline`, e.g. the Japanese model), draws one
image per prompt on fixed noise and is scored by an open_clip model: 100 * max(cos, 0) between
image and text, averaged over the prompt set. Japanese prompts can be scored through a paired
English gloss (`gloss` in the prompt file) when the scorer reads English only.

Config (`fitness:` of an evolve config):

    fitness:
      metric: sdxl_clip_score
      dataset: prompts.json          # {"splits": {NAME: [{"text": ..., "gloss": ...}, ...]}}
      split: fitness
      n_samples: 180                 # first N prompts of the split (default: all)
      generation: {steps: 4, guidance_scale: 0, scheduler: euler, timestep_spacing: trailing,
                   batch_size: 60, seed: 0}
      options:
        pipeline: japanese           # source whose text encoders/tokenizers/VAE are used
        clip_model: local-dir:clip   # open_clip name, or local-dir:PATH (relative: to the dataset)
        dtype: float32               # pipeline weights and compute (float16 on GPUs)
        clip_pretrained: null        # open_clip `pretrained` tag or weights file, if needed
        score_text: gloss            # "gloss" or "text": which prompt field the scorer reads
        images_dir: null             # where the best candidate's images are kept (default:
                                     # RUN_DIR/images when the engine passes its run dir)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evomm.errors import ConfigError
from evomm.fitness.registry import FitnessContext, register_fitness


@dataclass(frozen=True)
class PromptItem:
    text: str  # what the generator reads
    gloss: str  # what an English-only scorer reads (defaults to the text)


def load_prompts(path: str | Path, split: str | None = None, n: int | None = None) -> list[PromptItem]:
    """Prompts of `split` from a JSON file: {"splits": {NAME: [...]}} or a plain list.

    Items are strings or {"text": ..., "gloss": ...} objects.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"fitness.dataset: {path}: no such prompt file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"fitness.dataset: {path}: not valid JSON ({exc.msg})") from None
    if isinstance(raw, dict):
        splits = raw.get("splits", raw)
        if split is None:
            raise ConfigError(f"fitness.split: {path} has splits {sorted(splits)}; name one")
        if split not in splits:
            raise ConfigError(f"fitness.split: {split!r} is not one of {sorted(splits)} in {path}")
        raw = splits[split]
    items = []
    for entry in raw:
        if isinstance(entry, str):
            items.append(PromptItem(entry, entry))
        else:
            items.append(PromptItem(entry["text"], entry.get("gloss") or entry["text"]))
    if n is not None:
        items = items[:n]
    if not items:
        raise ConfigError(f"fitness.dataset: {path} gives no prompts for split {split!r}")
    return items


def clip_scorer(name: str, pretrained: str | None, device: str):
    """The project's one CLIPScore implementation (100 * max(cos, 0)), batched for a prompt set."""
    from evomm.metrics.clip_score import ClipScorer

    return ClipScorer(name, pretrained=pretrained, device=device, batch_size=256)


def resolve_clip_name(name: str, base: Path | None) -> str:
    """`local-dir:REL` is taken relative to `base` (the prompt file's folder) when it exists there."""
    prefix = "local-dir:"
    if name.startswith(prefix) and base is not None:
        path = Path(name[len(prefix):])
        if not path.is_absolute() and (base / path).is_dir():
            return prefix + str((base / path).resolve())
    return name


class SDXLClipFitness:
    """Evaluator: recipe spec -> mean CLIP score of the merged UNet's images on the prompt set."""

    def __init__(self, candidate, scorer, prompts: list[PromptItem], score_text: str = "gloss",
                 images_dir: str | Path | None = None, grid_columns: int = 18):
        if score_text not in ("gloss", "text"):
            raise ConfigError("fitness.options.score_text: must be 'gloss' or 'text'")
        self.candidate = candidate
        self.scorer = scorer
        self.prompts = prompts
        self.prepared = candidate.prepare([p.text for p in prompts])
        self.score_texts = [p.gloss if score_text == "gloss" else p.text for p in prompts]
        self.images_dir = Path(images_dir) if images_dir else None
        self.grid_columns = grid_columns
        self.best = float("-inf")
        self.evaluations = 0
        self.last_seconds: dict[str, float] = {}

    def score_images(self, images: torch.Tensor):
        """Per-prompt scores (numpy) of images (N, 3, H, W) in [0, 1]."""
        return self.scorer.score_tensors(images, self.score_texts)

    def evaluate(self, spec: dict[str, Any]) -> float:
        import time

        t0 = time.perf_counter()
        self.candidate.set_recipe(spec)
        t1 = time.perf_counter()
        images = self.candidate.generate(self.prepared)
        t2 = time.perf_counter()
        fitness = float(self.score_images(images).mean())
        t3 = time.perf_counter()
        self.last_seconds = {"merge": t1 - t0, "generate": t2 - t1, "score": t3 - t2}
        self.evaluations += 1
        if fitness > self.best:
            self.best = fitness
            self._keep(images, fitness)
        return fitness

    def _keep(self, images: torch.Tensor, fitness: float) -> None:
        """Save the best-so-far candidate's images (a grid), so progress can be watched."""
        if self.images_dir is None:
            return
        from evomm.models.sdxl import image_grid

        self.images_dir.mkdir(parents=True, exist_ok=True)
        cols = min(self.grid_columns, len(images))
        rows = len(images) // cols
        grid = image_grid(images[: rows * cols], rows, cols, scale=2)
        name = f"best_eval{self.evaluations:05d}_fitness{fitness:.2f}.png"
        grid.save(self.images_dir / name)
        grid.save(self.images_dir / "best.png")


def pipeline_dtype(opts: dict[str, Any]) -> torch.dtype:
    name = opts.get("dtype", "float32")
    if name not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"fitness.options.dtype: {name!r} is not float32, float16 or bfloat16")
    return getattr(torch, name)


def source_path(ctx: FitnessContext, ref: str) -> str:
    if ref in ctx.sources:
        return ctx.sources[ref]
    if Path(ref).exists():
        return ref
    raise ConfigError(f"fitness.options.pipeline: {ref!r} is neither a source name ({sorted(ctx.sources)}) nor a path")


@register_fitness("sdxl_clip_score")
def sdxl_clip_score(ctx: FitnessContext) -> SDXLClipFitness:
    from evomm.models.sdxl import SamplerSettings, SDXLCandidatePipeline

    opts = dict(ctx.options)
    known = {"pipeline", "clip_model", "clip_pretrained", "score_text", "images_dir", "config_dir", "dtype"}
    unknown = set(opts) - known
    if unknown:
        raise ConfigError(f"fitness.options: unknown option(s) {sorted(unknown)} (known: {sorted(known)})")
    if not ctx.dataset:
        raise ConfigError("fitness.dataset: name the prompt file (JSON)")
    if "pipeline" not in opts or "clip_model" not in opts:
        raise ConfigError("fitness.options: set `pipeline` (the text-encoder source) and `clip_model`")
    pipeline_path = source_path(ctx, opts["pipeline"])
    dataset = prompt_file_path(ctx.dataset, pipeline_path)
    prompts = load_prompts(dataset, ctx.split, ctx.n_samples)
    sampler = SamplerSettings.from_dict(ctx.generation)
    candidate = SDXLCandidatePipeline(pipeline_path, sampler, device=ctx.device, dtype=pipeline_dtype(opts),
                                      config_dir=opts.get("config_dir"))
    scorer = clip_scorer(resolve_clip_name(opts["clip_model"], dataset.parent),
                          opts.get("clip_pretrained"), device=ctx.device)
    images_dir = opts.get("images_dir") or (Path(ctx.run_dir) / "images" if getattr(ctx, "run_dir", None) else None)
    return SDXLClipFitness(candidate, scorer, prompts, opts.get("score_text", "gloss"), images_dir)


# ------------------------------------------------------------------------- held-out report


def prompt_file_path(dataset: str, pipeline_path: str) -> Path:
    """The prompt file as given, else relative to the pipeline source's folder (the zoo)."""
    path = Path(dataset)
    if path.exists() or path.is_absolute():
        return path
    near = Path(pipeline_path).parent / path.name
    return near if near.exists() else path
