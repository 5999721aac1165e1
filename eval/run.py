"""Run a benchmark config: `python eval/run.py --config eval/configs/X.yaml [--out DIR]`.

A thin entry point over `evomm eval` for those who run the eval folder directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evomm.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["eval", *sys.argv[1:]]))
