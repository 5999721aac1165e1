"""Atomic output folders and copying the small files `from_pretrained` needs beside weights."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from evomm.errors import OutputExistsError

# tokenizer / processor / generation files: copied from the source the recipe names
AUX_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
    "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
    "processor_config.json", "image_processor_config.json", "video_preprocessor_config.json",
    "generation_config.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder next to `out_dir`; rename it into place only if the block succeeds.

    On any exception the temp folder is removed, so a failed run leaves nothing at `out_dir`.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and (out_dir.is_file() or any(out_dir.iterdir())) and not overwrite:
        raise OutputExistsError(f"{out_dir}: already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_aux_files(src_dir: Path | None, dst_dir: Path, names=AUX_FILES) -> list[str]:
    """Copy the tokenizer/processor/generation files present in `src_dir`; return their names."""
    copied = []
    if src_dir is None:
        return copied
    for name in names:
        src = Path(src_dir) / name
        if src.is_file():
            shutil.copy2(src, Path(dst_dir) / name)
            copied.append(name)
    return copied
