"""The `evomm` command line.

Each subcommand lives in its own module under `evomm.commands` and is imported only when it
runs, so `evomm --help` stays fast and a missing optional dependency of one command never
breaks the others. A command module provides `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> (module under evomm.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "merge": ("merge", "merge checkpoints with a mergekit-style YAML recipe"),
    "evolve": ("evolve", "evolve a merge recipe with CMA-ES (PS, DFS, PS+DFS)"),
    "eval": ("eval", "evaluate VLMs on Japanese VQA, or LLMs on lm-eval tasks (jp-lmeh)"),
    "zoo": ("zoo", "build or check the toy model zoo"),
    "plan": ("plan", "estimate an evolve run's genome, memory and time per candidate (headers only)"),
    "convert": ("convert", "convert a published repo layout (jsdxl) to one evomm loads without remote code"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evomm", description="evomm: evolutionary model merging (PS, DFS, PS+DFS) for LLMs, VLMs and SDXL UNets."
    )
    parser.add_argument("--version", action="version", version=f"evomm {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> str:
    from evomm import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help / version / error
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(f"evomm.commands.{module_name}")
    except ModuleNotFoundError as exc:
        print(f"evomm {name}: not available ({exc})", file=sys.stderr)
        return 2
    sub_parser = argparse.ArgumentParser(prog=f"evomm {name}", description=help_text)
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
