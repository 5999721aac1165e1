"""Rebuild the toy zoo shipped in assets/zoo (same as `evomm zoo build`).

    python assets/build_zoo.py [--out assets/zoo] [--seed 0] [--num-threads 1] [--small]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evomm.commands import zoo  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    zoo.add_arguments(parser)
    raise SystemExit(zoo.run(parser.parse_args(["build", *sys.argv[1:]])))
