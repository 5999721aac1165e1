"""`evomm eval --config CONFIG.yaml [--out DIR]`: benchmark VLMs and write the ROUGE table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evomm.errors import EvommError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="eval config YAML (see eval/configs/)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: runs/eval/<config name>)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N questions of each benchmark (smoke runs)")
    parser.add_argument("--device", default=None, help="override the config's device (cpu, cuda, auto)")
    parser.add_argument("--threads", "--num-threads", dest="threads", type=int, default=None,
                        help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    from evomm.evaluation import load_config, render_markdown, run_evaluation

    try:
        config = load_config(args.config)
        if args.limit is not None:
            for bench in config.benchmarks:
                bench.limit = min(bench.limit or args.limit, args.limit)
        if args.device:
            config.device = args.device
        if args.threads:
            config.threads = args.threads
        out = Path(args.out) if args.out else Path("runs") / "eval" / config.name
        report = run_evaluation(config, out_dir=out, config_dir=Path(args.config).resolve().parent,
                                log=lambda msg: print(msg, file=sys.stderr))
    except EvommError as exc:
        print(f"evomm eval: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evomm eval: interrupted (no output written)", file=sys.stderr)
        return 130
    print(render_markdown(report))
    print(f"wrote {out}/table.md, rouge.png, results.json, predictions/", file=sys.stderr)
    return 0
