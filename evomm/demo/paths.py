"""File access confined to configured roots.

A visitor only ever names a run by a string that the UI offered; that string is still
untrusted (any client can call the API), so it is resolved — symlinks included — and must
land inside the configured root.
"""

from __future__ import annotations

from pathlib import Path

from evomm.demo.limits import DemoInputError


class DemoPathError(DemoInputError):
    """A requested path lies outside the configured root (or does not exist there)."""


def resolve_within(root: str | Path, relative: str) -> Path:
    """`root / relative`, resolved, guaranteed to be inside `root`."""
    if not isinstance(relative, str) or not relative.strip():
        raise DemoPathError("Please choose a run.")
    if "\x00" in relative:
        raise DemoPathError("Invalid run name.")
    base = Path(root).resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base):
        raise DemoPathError(f"'{relative}' is not a run under the configured runs root.")
    return candidate


def file_within(root: Path, relative: str) -> Path | None:
    """An existing regular file `root / relative` inside `root` (symlinks out are ignored)."""
    path = (root / relative).resolve()
    if path.is_relative_to(root.resolve()) and path.is_file():
        return path
    return None
