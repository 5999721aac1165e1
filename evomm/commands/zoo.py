"""`evomm zoo build|check`: rebuild the toy zoo, or verify the shipped one against its hashes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evomm.errors import CheckpointError, ConfigError, EvommError
from evomm.zoo import SHIPPED_ZOO as SHIPPED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="train a zoo from scratch (the VLM zoo: about 20-30 min on one CPU "
                                         "thread; the math zoo: about 15 min on two)")
    build.add_argument("--world", choices=("vlm", "math"), default="vlm",
                       help="vlm: the toy EvoVLM-JP zoo (assets/zoo); math: the toy EvoLLM-JP zoo (assets/math_zoo)")
    build.add_argument("--out", default=None,
                       help="output directory (default: the shipped zoo of the world; required with --small)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--num-threads", type=int, default=1)
    build.add_argument("--small", action="store_true", help="a seconds-long shrunken zoo (for tests)")
    check = sub.add_parser("check", help="verify a zoo's files against its hashes.json")
    check.add_argument("--zoo", default=str(SHIPPED), help="zoo directory (e.g. assets/math_zoo)")


def check_zoo(zoo: str | Path) -> list[str]:
    """Problems found in a zoo directory (empty when every hashed file matches)."""
    from evomm.zoo.build import hash_tree

    zoo = Path(zoo)
    manifest = zoo / "hashes.json"
    if not manifest.is_file():
        raise CheckpointError(f"no hashes.json in {zoo}")
    expected = json.loads(manifest.read_text())
    actual = hash_tree(zoo)
    problems = [f"missing: {name}" for name in expected if name not in actual]
    problems += [f"changed: {name}" for name in expected if name in actual and actual[name] != expected[name]]
    problems += [f"unlisted: {name}" for name in actual if name not in expected]
    return problems


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except EvommError as exc:
        print(f"evomm zoo: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.action == "check":
        problems = check_zoo(args.zoo)
        for problem in problems:
            print(problem)
        print(f"zoo {args.zoo}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 0 if not problems else 1
    if args.small and args.out is None:
        raise ConfigError("--small needs --out DIR (it must not replace the shipped zoo)")
    if args.world == "math":
        from evomm.zoo_math import SHIPPED_MATH_ZOO
        from evomm.zoo_math.build import MathZooConfig, build_math_zoo

        cfg = MathZooConfig.small(args.seed) if args.small else MathZooConfig(seed=args.seed)
        out = build_math_zoo(args.out or SHIPPED_MATH_ZOO, cfg, num_threads=args.num_threads)
    else:
        from evomm.zoo.build import ZooConfig, build_zoo

        cfg = ZooConfig.small(args.seed) if args.small else ZooConfig(seed=args.seed)
        out = build_zoo(args.out or SHIPPED, cfg, num_threads=args.num_threads)
    print(f"zoo written to {out}")
    return 0
