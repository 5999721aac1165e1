"""`evomm convert jsdxl SRC OUT`: a published repo layout -> a folder evomm loads without remote code.

`jsdxl`: a local copy of stabilityai/japanese-stable-diffusion-xl (which needs
`trust_remote_code` as published) -> a standard StableDiffusionXLPipeline folder with the same
text conditioning (see `evomm.models.jsdxl` and docs/jsdxl.md). OUT is written atomically.
"""

from __future__ import annotations

import argparse
import sys

from evomm.errors import EvommError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", required=True)
    jsdxl = sub.add_parser("jsdxl", help="stabilityai/japanese-stable-diffusion-xl -> StableDiffusionXLPipeline folder")
    jsdxl.add_argument("src", help="local copy of the JSDXL repo (model_index.json, unet/, text_encoder/, ...)")
    jsdxl.add_argument("out", help="output folder (must not exist or be empty)")
    jsdxl.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")


def run(args: argparse.Namespace) -> int:
    try:
        from evomm.models.jsdxl import convert_jsdxl

        note = convert_jsdxl(args.src, args.out, overwrite=args.overwrite)
    except EvommError as exc:
        print(f"evomm convert: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: StableDiffusionXLPipeline (JSDXL text encoder + zero null encoder of width "
          f"{note['null_width']}); details in {args.out}/evomm_conversion.json")
    if note["not_copied"]:
        print(f"not copied (code, pickles, docs): {', '.join(note['not_copied'])}")
    return 0
