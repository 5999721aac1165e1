"""Turn a model reference (local path or Hub id) into a local folder.

Only safetensors, JSON and tokenizer files are fetched from the Hub: never pickles, never
custom code, so what `evomm merge` downloads is what it can read safely.
"""

from __future__ import annotations

from pathlib import Path

from evomm.errors import CheckpointError

HUB_PATTERNS = [
    "*.safetensors",
    "*.json",
    "*.model",  # sentencepiece
    "*.tiktoken",
    "*.txt",  # merges.txt, vocab.txt
    "*.jinja",
    "unet/*.safetensors",
    "unet/*.json",
]


def resolve_model_path(ref: str | Path, base_dir: Path | None = None) -> Path:
    """A local path if `ref` is one (also tried relative to `base_dir`), else a Hub download."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if base_dir is not None and not path.is_absolute() and (base_dir / path).exists():
        return base_dir / path
    ref = str(ref)
    parts = ref.split("/")
    if path.is_absolute() or ref.startswith(".") or len(parts) != 2 or not all(parts):
        raise CheckpointError(f"{ref}: no such file or directory (and not a Hub id 'org/name')")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=ref, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # offline, missing repo, auth...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{ref}: not a local path and Hub download failed ({first_line})") from None
