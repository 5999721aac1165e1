"""`evomm merge CONFIG.yml OUT_DIR`: run a mergekit-style recipe on checkpoints.

Computes in float32, writes the recipe's dtype, and writes OUT_DIR atomically: the merged
weights (sharded safetensors), config and tokenizer/processor files, the recipe
(`evomm_recipe.yml`) and a model card (`README.md`). On any error nothing is left at OUT_DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evomm.errors import EvommError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="merge recipe (mergekit YAML format + optional evomm: section)")
    parser.add_argument("out_dir", help="output folder (must not exist or be empty)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also read pickled .bin/.pt/.ckpt weights (loaded with weights_only=True)")
    parser.add_argument("--device", default="cpu", help="where to compute, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--num-threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the recipe and models and print the plan; write nothing")


def run(args: argparse.Namespace) -> int:
    import torch

    from evomm.merge.execute import describe_plan, plan_merge, run_merge
    from evomm.merge.recipe import load_recipe

    torch.set_num_threads(max(1, args.num_threads))
    try:
        recipe = load_recipe(args.config)
        if args.dry_run:
            plan = plan_merge(recipe, allow_pickle=args.allow_pickle, base_dir=Path(args.config).resolve().parent)
            print(describe_plan(plan))
            return 0
        out = run_merge(recipe, args.out_dir, allow_pickle=args.allow_pickle, device=args.device,
                        base_dir=Path(args.config).resolve().parent, progress=not args.no_progress,
                        overwrite=args.overwrite)
    except EvommError as exc:
        print(f"evomm merge: error: {exc}", file=sys.stderr)
        return 2
    print(f"evomm merge: wrote {out}")
    return 0
