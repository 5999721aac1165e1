"""`evomm plan CONFIG.yml [--set KEY=VALUE ...]`: what an evolve run will need, before it runs.

Prints per stage the genome size, the tensors merged, the estimated peak memory per
evaluator on the device and the host, and the time per candidate, read from configs and
safetensors headers alone (no weights are loaded). `evomm evolve` makes the same estimate and
refuses a run that cannot fit the machine it is on.
"""

from __future__ import annotations

import argparse
import sys

from evomm.errors import EvommError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="evolve config (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, as for `evomm evolve` (repeatable)")


def run(args: argparse.Namespace) -> int:
    from evomm.search.estimate import available_memory, describe, plan_file

    try:
        config, estimates = plan_file(args.config, args.overrides)
    except EvommError as exc:
        print(f"evomm plan: {exc}", file=sys.stderr)
        return 2
    print(describe(config, estimates))
    gpu, host = available_memory(config.device)
    have = [f"{label} {value / 1024**3:.1f} GiB" for label, value in (("device", gpu), ("host", host)) if value]
    if have:
        print("  this machine: " + ", ".join(have))
    return 0
