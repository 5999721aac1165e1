"""Build tiny example checkpoints for `evomm merge` (the README's first command).

    python assets/make_merge_example.py build/merge_example
    evomm merge pipelines/examples/llm_ties.yml build/merged_llm

Writes, under OUT (all real transformers / diffusers classes, a few MB in total):
  base/, ft1/, ft2/     tiny Mistral LLMs: a base and two "fine-tunes" (base + seeded drift)
  vlm/                  a tiny LLaVA whose language model shares that base (4 extra vocab rows)
  vlm_next/             the same as LLaVA-NeXT (has image_newline)
  unet_base/, unet_ft1/, unet_ft2/   tiny SDXL-style diffusers UNets sharing a base
  unet_ft2_single.safetensors        unet_ft2 as an SDXL single-file checkpoint
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create")
    parser.add_argument("--num-threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from testkit.merge_examples import (make_llm_family, make_unet_family, make_vlm,
                                        save_single_file_unet)
    from testkit.tiny import tiny_sdxl_unet

    torch.set_num_threads(args.num_threads)
    out = args.out
    make_llm_family(out)
    make_vlm(out / "vlm")
    make_vlm(out / "vlm_next", next_version=True)
    make_unet_family(out)
    save_single_file_unet(tiny_sdxl_unet(seed=2, base_seed=0, scale=0.02), out / "unet_ft2_single.safetensors")
    print(f"example checkpoints written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
