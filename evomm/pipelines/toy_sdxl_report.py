"""The toy EvoSDXL-JP held-out report: parents, the uniform merge and the evolved UNet.

Run as the pipeline's `after_run` hook, or again by hand:

    python -m evomm.pipelines.toy_sdxl_report report pipelines/toy_evosdxl_jp.yml runs/toy_sdxl
    python -m evomm.pipelines.toy_sdxl_report summarise runs/toy_sdxl_s0 runs/toy_sdxl_s1 --markdown
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evomm.errors import ConfigError
from evomm.fitness.sdxl_clip_score import (PromptItem, clip_scorer, load_prompts, pipeline_dtype, prompt_file_path,
                                           resolve_clip_name, source_path)


def report_run(config_path: str | Path, run_dir: str | Path, split: str = "heldout", seed: int = 1000,
               parents: dict[str, str] | None = None, grid_rows: int = 6, save_pipeline_dir: bool = True,
               log=print) -> dict[str, Any]:
    """Score parents, the uniform merge and the evolved merge on held-out prompts.

    Writes RUN_DIR/results.json ({"models": {NAME: {"clip_score": x, ...}}}), RUN_DIR/grid.png
    (prompts x models) and, unless told not to, the evolved pipeline to RUN_DIR/pipeline.
    Parents are scored as their own pipelines (their own text encoders) on the same prompts and
    noise; `fewstep_unet_ja_text` (SLERP spaces) is the few-step UNet under the candidate's
    text encoders; `search_start` is the search's starting merge, reported when a config
    starts somewhere other than the uniform merge, so the gain of the search itself shows.
    """
    import yaml

    from evomm.models.sdxl import SamplerSettings, SDXLCandidatePipeline
    from evomm.search.config import load_config
    from evomm.search.stages import build_space, fitness_context

    run_dir = Path(run_dir)
    config = load_config(config_path) if isinstance(config_path, (str, Path)) else config_path
    stage = config.stages[0]
    ctx = fitness_context(config, stage, dict(config.sources))
    report_cfg = dict(config.extras.get("report", {}))
    split = report_cfg.get("split", split)
    seed = int(report_cfg.get("seed", seed))
    parents = parents or report_cfg.get("parents") or {}
    opts = ctx.options
    pipeline_path = source_path(ctx, opts["pipeline"])
    prompts = load_prompts(prompt_file_path(ctx.dataset, pipeline_path), split)
    sampler = SamplerSettings.from_dict({**ctx.generation, "seed": seed})
    scorer = clip_scorer(resolve_clip_name(opts["clip_model"], prompt_file_path(ctx.dataset, pipeline_path).parent),
                          opts.get("clip_pretrained"), device=ctx.device)
    texts = [p.gloss if opts.get("score_text", "gloss") == "gloss" else p.text for p in prompts]

    space = build_space(stage.space, dict(config.sources), config.seed)
    best_recipe = run_dir / "best_recipe.yml"
    if not best_recipe.exists():
        raise ConfigError(f"{run_dir}: no best_recipe.yml (has the evolve run finished?)")
    specs = {"uniform": _uniform_spec(space),
             "evolved": yaml.safe_load(best_recipe.read_text(encoding="utf-8"))}
    if stage.space.method == "slerp":
        specs["fewstep_unet_ja_text"] = space.decode(space.encode({"t": 1.0}))
    if not np.allclose(space.initial(), space.encode(_uniform_values(space))):
        specs["search_start"] = space.decode(space.initial())

    results: dict[str, dict[str, float]] = {}
    images: dict[str, torch.Tensor] = {}

    def record(name: str, imgs: torch.Tensor) -> None:
        s = scorer.score_tensors(imgs, texts)
        results[name] = {"clip_score": float(s.mean()), "std_over_prompts": float(s.std(ddof=1)), "n_prompts": len(s)}
        images[name] = imgs
        log(f"[report] {name}: CLIP score {results[name]['clip_score']:.3f}")

    for name, ref in parents.items():
        parent = SDXLCandidatePipeline(source_path(ctx, ref), sampler, device=ctx.device, dtype=pipeline_dtype(opts))
        record(name, parent.generate(parent.prepare([p.text for p in prompts])))
        parent.close()
    candidate = SDXLCandidatePipeline(pipeline_path, sampler, device=ctx.device, dtype=pipeline_dtype(opts),
                                      config_dir=opts.get("config_dir"))
    prepared = candidate.prepare([p.text for p in prompts])
    for name in ["uniform", "search_start", "fewstep_unet_ja_text", "evolved"]:
        if name in specs:
            candidate.set_recipe(specs[name])
            record(name, candidate.generate(prepared))
    if save_pipeline_dir:
        candidate.save(run_dir / "pipeline", overwrite=True)  # the evolved UNet is the last one set
    candidate.close()

    order = [n for n in [*parents, "uniform", "evolved"] if n in images]
    _write_grid(run_dir / "grid.png", prompts, images, order, grid_rows)
    out = {
        "models": results,
        "split": split,
        "noise_seed": seed,
        "sampler": sampler.__dict__,
        "scorer": opts["clip_model"],
        "scored_against": opts.get("score_text", "gloss"),
        "grid": "grid.png",
        "pipeline": "pipeline" if save_pipeline_dir else None,
    }
    from evomm.search.run import atomic_write_text

    atomic_write_text(run_dir / "results.json", json.dumps(out, indent=1, ensure_ascii=False))
    return out


def after_run_report(config, run_dir: str | Path, results: dict[str, Any]) -> None:
    """`after_run:` hook: write the held-out report as the last step of `evomm evolve`."""
    report_run(config, run_dir)


def _uniform_values(space) -> dict[str, float]:
    """Per-parameter values of the uniform merge (one place, so the report and its start check agree)."""
    n = len(getattr(space, "merged_models", [])) or 1
    weight = 1.0 / n if getattr(space, "method", "") == "linear" else 0.5
    return {"t": 0.5, "weight": weight, "density": 0.5}


def _uniform_spec(space) -> dict[str, Any]:
    """The plain uniform merge: equal weights (1/n linear, 0.5 otherwise), t = 0.5, density 0.5.

    Built explicitly rather than from the search's starting point, which a config may move.
    """
    return space.decode(space.encode(_uniform_values(space)))


def _write_grid(path: Path, prompts: list[PromptItem], images: dict[str, torch.Tensor], order: list[str],
                rows: int) -> None:
    """Prompts (rows, labelled by their English gloss) x models (columns)."""
    from PIL import Image, ImageDraw

    from evomm.models.sdxl import image_grid

    first: dict[str, int] = {}
    for i, p in enumerate(prompts):
        first.setdefault(p.gloss, i)
    distinct = list(first.values())  # one prompt per distinct gloss, in file order
    rows = min(rows, len(distinct))
    step = len(distinct) // rows
    # stagger within each stride so that (for colour x shape classes) colours and shapes both vary
    picks = [distinct[k * step + (k % step)] for k in range(rows)]
    tiles = torch.stack([images[name][i] for i in picks for name in order])
    grid = image_grid(tiles, len(picks), len(order), scale=3, pad=4)
    label_w, head_h = 170, 22
    canvas = Image.new("RGB", (grid.width + label_w, grid.height + head_h), (255, 255, 255))
    canvas.paste(grid, (label_w, head_h))
    draw = ImageDraw.Draw(canvas)
    cell_w = (grid.width - 4) / len(order)
    cell_h = (grid.height - 4) / len(picks)
    for c, name in enumerate(order):
        draw.text((label_w + 4 + c * cell_w, 5), name, fill=(0, 0, 0))
    for r, i in enumerate(picks):
        draw.text((4, head_h + 4 + r * cell_h + cell_h / 2 - 6), prompts[i].gloss, fill=(0, 0, 0))
    canvas.save(path)


def summarise(run_dirs: list[str | Path]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each model's held-out score over several runs."""
    import statistics

    per_model: dict[str, list[float]] = {}
    for run in run_dirs:
        path = Path(run) / "results.json"
        if not path.is_file():
            raise ConfigError(f"{run}: no results.json (has the run's held-out report been written?)")
        data = json.loads(path.read_text(encoding="utf-8"))
        for name, entry in data["models"].items():
            per_model.setdefault(name, []).append(entry["clip_score"])
    return {name: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": len(v),
                   "values": v} for name, v in per_model.items()}


def summary_markdown(summary: dict[str, dict[str, Any]], run_names: list[str]) -> str:
    """The summary as the Markdown table the docs show: one column per run, then mean ± s.d."""
    lines = ["| model | " + " | ".join(run_names) + " | mean ± s.d. |",
             "|---|" + "---|" * (len(run_names) + 1)]
    for name, entry in summary.items():
        values = " | ".join(f"{v:.2f}" for v in entry["values"])
        lines.append(f"| `{name}` | {values} | {entry['mean']:.2f} ± {entry['std']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m evomm.pipelines.toy_sdxl_report report CONFIG RUN_DIR` / `summarise RUN_DIR...`."""
    import argparse
    import sys

    from evomm.errors import EvommError

    parser = argparse.ArgumentParser(prog="python -m evomm.pipelines.toy_sdxl_report")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="held-out scores of parents, uniform and evolved merges")
    rep.add_argument("config")
    rep.add_argument("run_dir")
    rep.add_argument("--no-pipeline", action="store_true", help="do not write RUN_DIR/pipeline")
    rep.add_argument("--threads", type=int, default=1)
    summ = sub.add_parser("summarise", help="mean and spread over several runs' results.json")
    summ.add_argument("run_dirs", nargs="+")
    summ.add_argument("--markdown", action="store_true", help="print a Markdown table instead of JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            torch.set_num_threads(args.threads)
            out = report_run(args.config, args.run_dir, save_pipeline_dir=not args.no_pipeline)
            print(json.dumps(out["models"], indent=1))
        elif args.markdown:
            print(summary_markdown(summarise(args.run_dirs), [Path(r).name for r in args.run_dirs]))
        else:
            print(json.dumps(summarise(args.run_dirs), indent=1))
    except EvommError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
