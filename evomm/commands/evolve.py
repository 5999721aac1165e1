"""`evomm evolve CONFIG.yml --out RUN_DIR [--resume]`: evolve merge recipes with CMA-ES.

Writes to RUN_DIR (or RUN_DIR/<stage>/ for multi-stage configs): evaluations.jsonl,
checkpoint.pkl, history.json, best_recipe.yml, model/ (the best merged model with a model
card), fitness.png, genome.png and result.json. Killed at any moment, the same command with
`--resume` continues after the last completed generation and ends exactly as an
uninterrupted run would. The config format is described in docs/evolve.md.

A mergekit-evolve file (`genome:` + `tasks:`) runs unchanged, with mergekit-evolve's own flags
(--max-fevals, --sigma0, --task-search-path, --batch-size, --force-population-size); the evomm
config it becomes is written to RUN_DIR/evomm_config.yml. See docs/mergekit_evolve.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evomm.errors import EvommError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="evolve config (YAML)")
    parser.add_argument("--out", required=True, help="run directory (created; must be new unless --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out after its last completed generation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or per-generation lines")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads (overrides the config)")
    parser.add_argument("--seed", type=int, default=None, help="run seed (overrides the config's `seed:`)")
    parser.add_argument("--no-fit-check", action="store_true",
                        help="skip the memory estimate that refuses a run this machine cannot hold (see `evomm plan`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value (dotted key, YAML value), e.g. --set sources.llava=/data/llava "
                             "--set device=cpu --set stages.0.optimizer.generations=2; repeatable")
    mk = parser.add_argument_group("mergekit-evolve configs (genome: + tasks:), same meaning as in mergekit-evolve")
    mk.add_argument("--max-fevals", type=int, default=None, help="evaluations (default 100)")
    mk.add_argument("--sigma0", type=float, default=None, help="CMA-ES initial step (default 1/6)")
    mk.add_argument("--task-search-path", action="append", default=None, metavar="DIR",
                    help="folder of local lm-eval task YAMLs; repeatable")
    mk.add_argument("--batch-size", type=int, default=None, help="lm-eval batch size")
    mk.add_argument("--force-population-size", type=int, default=None, help="CMA-ES population size")


def _mergekit_cli(args: argparse.Namespace):
    from evomm.search.mergekit_evolve import MergekitCLI

    given = {"max_fevals": args.max_fevals, "sigma0": args.sigma0, "task_search_path": args.task_search_path,
             "batch_size": args.batch_size, "popsize": args.force_population_size}
    return MergekitCLI(**{k: v for k, v in given.items() if v is not None})


def _config_text(path: Path, seed: int | None, overrides: list[str]) -> str:
    """The config as run: the file itself, or with --seed / --set applied."""
    text = path.read_text(encoding="utf-8")
    if seed is None and not overrides:
        return text
    import yaml

    from evomm.search.config import read_config_data

    data = read_config_data(path, overrides)
    flags = ([f"--seed {seed}"] if seed is not None else []) + [f"--set {o}" for o in overrides]
    if seed is not None:
        data["seed"] = seed
    return f"# {path.name} run with {' '.join(flags)}\n" + yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _check_fits(config) -> None:
    """Refuse a run whose evaluator cannot fit this machine (the estimate of `evomm plan`)."""
    from evomm.search.estimate import check_fits, estimate_run

    try:
        estimates = estimate_run(config)
    except (EvommError, KeyError, ValueError, OSError) as exc:  # the run itself will say what is wrong
        print(f"evomm evolve: note: no memory estimate ({exc})", file=sys.stderr)
        return
    check_fits(config, estimates)


def run(args: argparse.Namespace) -> int:
    from evomm.search.config import load_config
    from evomm.search.run import atomic_write_text
    from evomm.search.stages import run_all

    try:
        config = load_config(args.config, args.overrides, mergekit_cli=_mergekit_cli(args))
        if args.num_threads:
            config.num_threads = args.num_threads
        if args.seed is not None:
            config.seed = args.seed
        import torch

        torch.set_num_threads(config.num_threads)
        if not args.no_fit_check:
            _check_fits(config)
        out = Path(args.out)
        config_copy = out / "config.yml"
        # a run that stopped before its first evaluation left only config.yml: start it afresh
        used = out.exists() and any(p != config_copy for p in out.iterdir())
        if used and not args.resume:
            raise EvommError(f"{out} is not empty; pass --resume to continue the run there, or choose a new --out")
        out.mkdir(parents=True, exist_ok=True)
        if not used or not config_copy.exists():
            atomic_write_text(config_copy, _config_text(Path(args.config), args.seed, args.overrides))
            if "mergekit_evolve" in config.extras:
                import yaml

                as_run = config.model_dump(mode="json", exclude={"config_dir", "space"}, exclude_none=True)
                atomic_write_text(out / "evomm_config.yml", "# the evomm config this mergekit-evolve file became\n"
                                  + yaml.safe_dump(as_run, allow_unicode=True, sort_keys=False))
        results = run_all(config, out, resume=args.resume, progress=not args.no_progress)
    except EvommError as exc:
        print(f"evomm evolve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"evomm evolve: interrupted; continue with --resume --out {args.out}", file=sys.stderr)
        return 130
    for name, result in results.items():
        print(f"{name}: best fitness {result['best_fitness']:.6g} after {result['evaluations']} evaluations; "
              f"recipe {result['best_recipe']}" + (f"; model {result['model']}" if result.get("model") else ""))
    return 0

