"""Plain CMA-ES against CMA-ES with Margin on one DFS stage: same genome, budget and seeds.

    python benchmarks/dfs_optimizers.py pipelines/toy_evollm_jp.yml --stage dfs --seeds 0 1 2 \
        [--optimizers cmaes cmaes_margin] [--out runs/dfs_optimizers] [--n-test 400]

For every optimizer and seed it runs the named stage alone (`--set seed=S --set
optimizer.name=O`; the stage must not read another stage's result), then scores the saved best
model on the zoo's held-out test split (`extras.report.dataset`). Prints best fitness and
held-out accuracy per run, mean ± s.d. per optimizer, and the difference of the means. The
genome is a DFS genome: binary layer inclusion plus continuous log-scales, which CMA-ES with
Margin (the `cmaes` package's CMAwM) treats as such and plain CMA-ES treats as reals.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(config_path: Path, stage: str, optimizer: str, seed: int, out: Path, overrides: list[str]) -> dict:
    from evomm.search.config import load_config
    from evomm.search.stages import run_all

    config = load_config(config_path, [f"seed={seed}", f"optimizer.name={optimizer}", *overrides])
    config.stages = [s for s in config.stages if s.name == stage]
    if not config.stages:
        raise SystemExit(f"no stage {stage!r} in {config_path}")
    config.after_run = []
    start = time.perf_counter()
    result = run_all(config, out, progress=False)[stage]
    return {"best_fitness": result["best_fitness"], "evaluations": result["evaluations"],
            "model": result["model"], "seconds": time.perf_counter() - start,
            "dataset": (config.extras.get("report") or {}).get("dataset"), "config_dir": config.config_dir}


def held_out(model_dir: str, dataset: Path, n_test: int | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import evomm.models.dfs  # noqa: F401 - registers the DFS config
    from evomm.zoo_math.evaluate import evaluate_model, read_split

    rows = read_split(dataset / "test.jsonl")[:n_test]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    scores, _ = evaluate_model(model, tokenizer, rows, max_new_tokens=64)
    return {"acc": scores["acc"], "acc_ja": scores["acc_ja"], "path": getattr(model.config, "dfs_path", None)}


def _stat(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {sd:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--stage", default="dfs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizers", nargs="+", default=["cmaes", "cmaes_margin"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "dfs_optimizers")
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override applied to every run (as `evomm evolve --set`)")
    parser.add_argument("--no-held-out", action="store_true",
                        help="report the fitness only (worlds other than the toy math zoo)")
    args = parser.parse_args(argv)

    rows = []
    for optimizer in args.optimizers:
        for seed in args.seeds:
            out = args.out / f"{optimizer}_s{seed}"
            run = run_one(args.config, args.stage, optimizer, seed, out, args.overrides)
            test = {"acc": float("nan"), "acc_ja": float("nan")}
            if not args.no_held_out:
                dataset = Path(run["dataset"])
                if not dataset.is_absolute():
                    dataset = Path(run["config_dir"]) / dataset
                test = held_out(run["model"], dataset, args.n_test)
            rows.append({"optimizer": optimizer, "seed": seed, **run, **test})
            print(f"{optimizer} seed {seed}: fitness {run['best_fitness']:.1f} after {run['evaluations']} "
                  f"evaluations ({run['seconds']:.0f}s); held-out acc_ja {test['acc_ja']:.1f}, acc {test['acc']:.1f}",
                  flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    print()
    print("| optimizer | best fitness | held-out acc_ja % | held-out acc % | runs |")
    print("|---|---|---|---|---|")
    means = {}
    for optimizer in args.optimizers:
        mine = [r for r in rows if r["optimizer"] == optimizer]
        means[optimizer] = statistics.fmean(r["acc_ja"] for r in mine)
        print(f"| {optimizer} | {_stat([r['best_fitness'] for r in mine])} | {_stat([r['acc_ja'] for r in mine])} "
              f"| {_stat([r['acc'] for r in mine])} | {len(mine)} |")
    if len(means) == 2:
        (a, ma), (b, mb) = means.items()
        print(f"\nheld-out acc_ja, {b} - {a}: {mb - ma:+.1f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
