"""Candidate turnaround of the toy EvoSDXL-JP search: merge UNet + generate prompt set + score.

    python benchmarks/sdxl_candidate_speed.py [--config pipelines/toy_evosdxl_jp.yml] [--candidates 6]

Builds the fitness evaluator exactly as `evomm evolve` does, evaluates random candidates of the
config's search space, and prints how each candidate's time splits between merging the UNet in
memory, generating the prompt set and scoring it. Baselines measured in the same run:
`load_state_dict` of an already merged UNet (the floor for writing weights into the live model)
and one generation pass of the unmerged parent (the floor for the sampling part).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from evomm.search.config import load_config
    from evomm.fitness.registry import build_evaluator
    from evomm.search.stages import build_space, fitness_context

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "pipelines" / "toy_evosdxl_jp.yml"))
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-samples", type=int, default=None, help="prompts per candidate (default: the config's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = load_config(args.config)
    stage = config.stages[0]
    ctx = fitness_context(config, stage, dict(config.sources))
    if args.n_samples:
        ctx.n_samples = args.n_samples
    t0 = time.perf_counter()
    evaluator = build_evaluator(ctx)
    setup = time.perf_counter() - t0
    space = build_space(stage.space, dict(config.sources), config.seed)
    rng = np.random.default_rng(0)
    genomes = [space.initial()] + [rng.uniform(space.lower, space.upper) for _ in range(args.candidates)]

    evaluator.evaluate(space.decode(genomes[0]))  # warm-up: reads and caches the source tensors
    rows = []
    for x in genomes[1:]:
        t = time.perf_counter()
        fitness = evaluator.evaluate(space.decode(x))
        total = time.perf_counter() - t
        rows.append({**evaluator.last_seconds, "total": total, "fitness": fitness})

    unet = evaluator.candidate.pipe.unet
    merged = {k: v.clone() for k, v in unet.state_dict().items()}
    floors = []
    for _ in range(5):
        t = time.perf_counter()
        unet.load_state_dict(merged)
        floors.append(time.perf_counter() - t)
    load_floor = statistics.median(floors)

    n_images = len(evaluator.prompts)
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("merge", "generate", "score", "total")}
    print(f"config {args.config}: {space.dim} coordinates, {n_images} prompts per candidate, "
          f"{evaluator.candidate.sampler.steps} steps, batch {evaluator.candidate.sampler.batch_size}, "
          f"{args.threads} thread(s); evaluator setup {setup:.2f} s")
    print(f"{'phase':<10}{'mean s':>10}{'share':>9}")
    for k in ("merge", "generate", "score"):
        print(f"{k:<10}{mean[k]:>10.3f}{mean[k] / mean['total']:>9.1%}")
    print(f"{'total':<10}{mean['total']:>10.3f}   ({n_images / mean['total']:.1f} images/s, "
          f"{args.candidates} candidates)")
    print(f"baseline: load_state_dict of a merged UNet {load_floor * 1000:.1f} ms -> merge is "
          f"{mean['merge'] / load_floor:.1f}x that floor")
    scores = ", ".join(f"{r['fitness']:.2f}" for r in rows)
    print(f"fitness of the candidates: {scores}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
