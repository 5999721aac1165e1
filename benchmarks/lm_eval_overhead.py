"""What does scoring a candidate through lm-evaluation-harness cost, against evomm's own fitness?

Both fitness functions score the same PS candidates (task arithmetic over the toy math zoo's
Japanese LM and math LM A, one random genome per candidate) on the same seeded fitness
problems, greedy, the same batch size, in the same run:

- baseline: `math_accuracy_ja` (evomm's batched generator);
- `lm_eval`: the local task `toy_math_ja_fitness` run by lm-eval on the in-memory candidate.

It prints seconds per candidate (median over candidates, after one warm-up each), their ratio
(target: under 1.5x), and whether the two fitness values agree on every candidate.

    python benchmarks/lm_eval_overhead.py [--candidates 6] [--n 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ZOO = Path(__file__).resolve().parents[1] / "assets" / "math_zoo"


def _context(metric: str, n: int, options: dict):
    from evomm.fitness.registry import FitnessContext

    sources = {"base": str(ZOO / "base"), "ja": str(ZOO / "japanese_lm"), "math_a": str(ZOO / "math_a")}
    return FitnessContext(metric=metric, sources=sources, space={"models": [sources["ja"]]},
                          dataset=str(ZOO / "data"), split="fitness", n_samples=n,
                          generation={"max_new_tokens": 64, "batch_size": n}, options=options, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--n", type=int, default=60, help="fitness problems per candidate")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from evomm.fitness.registry import build_evaluator
    from evomm.search.ps_space import PSSpace

    space = PSSpace(method="task_arithmetic", models=[str(ZOO / "japanese_lm"), str(ZOO / "math_a")],
                    base_model=str(ZOO / "base"), num_layers=8, layers_per_group=2, weight_bounds=(0.0, 1.5))
    rng = np.random.default_rng(0)
    specs = [space.decode(space.lower + rng.random(space.dim) * (space.upper - space.lower))
             for _ in range(args.candidates)]
    evaluators = {
        "math_accuracy_ja": build_evaluator(_context("math_accuracy_ja", args.n, {
            "objective": "acc_ja", "template": "USER: {input} ASSISTANT:", "tokenizer": "ja", "num_threads": args.threads})),
        "lm_eval": build_evaluator(_context("lm_eval", args.n, {
            "tasks": [{"name": "toy_math_ja_fitness", "metric": "acc_ja,none"}], "include_path": str(ZOO / "lm_eval"),
            "include_defaults": False, "batch_size": args.n, "tokenizer": "ja"})),
    }
    torch.set_num_threads(args.threads)
    seconds: dict[str, list[float]] = {name: [] for name in evaluators}
    scores: dict[str, list[float]] = {name: [] for name in evaluators}
    for name, ev in evaluators.items():
        ev.evaluate(specs[0])  # warm-up: model load, first merge, task build
    for spec in specs:
        for name, ev in evaluators.items():
            start = time.perf_counter()
            scores[name].append(ev.evaluate(spec))
            seconds[name].append(time.perf_counter() - start)
    base, lm = statistics.median(seconds["math_accuracy_ja"]), statistics.median(seconds["lm_eval"])
    print(f"{args.candidates} candidates x {args.n} problems, {args.threads} thread(s)")
    for name in evaluators:
        print(f"  {name:17s} {statistics.median(seconds[name]):.3f} s/candidate (median), "
              f"fitness {[round(s, 1) for s in scores[name]]}")
    print(f"  ratio lm_eval / math_accuracy_ja: {lm / base:.2f}x (target < 1.5x)")
    print(f"  same fitness on every candidate: {scores['lm_eval'] == scores['math_accuracy_ja']}")


if __name__ == "__main__":
    main()
