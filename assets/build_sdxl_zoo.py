"""Build the toy SDXL zoo (assets/sdxl_zoo/): see evomm/zoo_sdxl/build.py and docs/toy_sdxl.md.

    python assets/build_sdxl_zoo.py --threads 2     # full zoo, ~35 min on 2 idle cores
    python assets/build_sdxl_zoo.py --small OUT     # shrunken zoo in seconds (smoke tests)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evomm.zoo_sdxl.build import build_zoo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=str(ROOT / "assets" / "sdxl_zoo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="tiny widths and a few steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--force", action="store_true", help="replace an existing zoo")
    parser.add_argument("--cache", default=None, help="keep trained stages here; a killed build resumes from them")
    args = parser.parse_args(argv)
    manifest = build_zoo(args.out, seed=args.seed, small=args.small, threads=args.threads, force=args.force,
                         cache_dir=args.cache)
    print(json.dumps({k: manifest[k] for k in ("checks", "seconds", "params")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
