"""evomm demo app: `python demos/app.py [flags]`, or the entry point of a Hugging Face Space.

Models and the runs root come from flags or EVOMM_DEMO_* environment variables (see
docs/demo.md); without any, the toy zoo shipped under assets/ is served.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from evomm.demo.app import add_server_arguments, launch  # noqa: E402
from evomm.demo.config import add_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
