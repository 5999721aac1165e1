"""Refuse to merge embeddings of models whose tokenizers disagree on shared token ids.

Row i of an embedding matrix means "token i"; averaging rows of two models is only sound
when token i is the same string in both. LLaVA-1.6-Mistral adds rows after Mistral's 32000,
which is fine; a different tokenizer is not.
"""

from __future__ import annotations

import logging
from pathlib import Path

from evomm.errors import TokenizerMismatchError

log = logging.getLogger(__name__)


def load_vocab(folder: Path | None) -> list[str | None] | None:
    """id -> token string from a model folder's tokenizer files, or None if it has none."""
    if folder is None:
        return None
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        size = tok.get_vocab_size(with_added_tokens=True)
        return [tok.id_to_token(i) for i in range(size)]
    if any((folder / f).is_file() for f in ("tokenizer.model", "vocab.json", "vocab.txt")):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        vocab = tok.get_vocab()
        tokens: list[str | None] = [None] * (max(vocab.values()) + 1 if vocab else 0)
        for token, idx in vocab.items():
            tokens[idx] = token
        return tokens
    return None


def check_tokenizers(folders: dict[str, Path | None], shared_rows: int) -> None:
    """Raise TokenizerMismatchError if two models' tokens differ on ids < shared_rows."""
    vocabs = {ref: v for ref, folder in folders.items() if (v := load_vocab(folder)) is not None}
    missing = [ref for ref in folders if ref not in vocabs]
    if missing and vocabs:
        log.warning("no tokenizer files for %s: cannot check that tokenizers agree", ", ".join(missing))
    refs = list(vocabs)
    for other in refs[1:]:
        a, b = vocabs[refs[0]], vocabs[other]
        limit = min(shared_rows, len(a), len(b))
        for i in range(limit):
            if a[i] != b[i]:
                raise TokenizerMismatchError(
                    f"differing tokenizers: {refs[0]} and {other} disagree at token id {i} "
                    f"({a[i]!r} vs {b[i]!r}); their embeddings cannot be merged row by row"
                )
