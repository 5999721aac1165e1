"""What uploads may cost a public Space: per request, per visitor over time, and on disk.

gradio bounds each uploaded *file* (`max_file_size`), but one request may carry many files,
a visitor may send request after request, and gradio's upload folder grows until the server
restarts. `UploadBudget` is an ASGI middleware in front of gradio's upload route that refuses,
with one plain-text line (and one log line, no stack trace):

- a request whose body is larger than `max_request_bytes` (413), judged by its
  Content-Length and, for a body without one (or lying about it), by counting as it streams;
- a visitor (the client address; behind the Space's proxy, the first X-Forwarded-For entry)
  who uploaded more than `max_visitor_bytes` in the last `visitor_window_s` seconds (429);
- an upload that would push the upload folder past `max_dir_bytes` once files older than
  `prune_after_s` have been deleted, oldest first (503).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


class UploadRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class UploadBudget:
    """ASGI middleware; configure through `app_kwargs={"middleware": [Middleware(UploadBudget, ...)]}`."""

    def __init__(self, app, *, max_request_bytes: int, max_visitor_bytes: int, visitor_window_s: float,
                 upload_dir: str | Path, max_dir_bytes: int, prune_after_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_visitor_bytes = max_visitor_bytes
        self.window = visitor_window_s
        self.upload_dir = Path(upload_dir)
        self.max_dir_bytes = max_dir_bytes
        self.prune_after_s = prune_after_s
        self.clock = clock
        self._sent: dict[str, deque[tuple[float, int]]] = defaultdict(deque)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, send)
        visitor = _visitor(scope)
        try:
            declared = self._admit(scope, visitor)
        except UploadRefused as refused:
            return await self._refuse(send, visitor, refused)
        counted = 0

        async def counting_receive():
            nonlocal counted
            message = await receive()
            if message["type"] == "http.request":
                counted += len(message.get("body", b""))
                if counted > self.max_request_bytes:  # a body larger than it said: cut it off
                    logger.warning("upload refused for %s: body passed %d bytes while streaming", visitor,
                                   self.max_request_bytes)
                    return {"type": "http.disconnect"}
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            self._record(visitor, max(counted, declared or 0))

    def _admit(self, scope, visitor: str) -> int | None:
        """Check a request before its body is read; the declared length, if any."""
        length = _content_length(scope)
        if length is not None and length > self.max_request_bytes:
            raise UploadRefused(413, f"Upload refused: {_mb(length)} in one request; at most "
                                     f"{_mb(self.max_request_bytes)} per request.")
        used = self._used(visitor)
        if used + (length or 0) > self.max_visitor_bytes:
            minutes = self.window / 60
            raise UploadRefused(429, f"Upload refused: you uploaded {_mb(used)} in the last {minutes:g} minutes "
                                     f"(at most {_mb(self.max_visitor_bytes)}); please wait a little.")
        needed = length if length is not None else self.max_request_bytes
        if self._make_room(needed) + needed > self.max_dir_bytes:
            raise UploadRefused(503, "Upload refused: the demo's upload space is full; please try again "
                                     "in a few minutes.")
        return length

    def _used(self, visitor: str) -> int:
        history, cutoff = self._sent[visitor], self.clock() - self.window
        while history and history[0][0] < cutoff:
            history.popleft()
        return sum(n for _, n in history)

    def _record(self, visitor: str, n_bytes: int) -> None:
        if n_bytes:
            self._sent[visitor].append((self.clock(), n_bytes))

    def _make_room(self, needed: int) -> int:
        """Delete upload files older than `prune_after_s`, oldest first, until `needed` more
        bytes fit; return the folder's size afterwards."""
        files = []
        for root, _dirs, names in os.walk(self.upload_dir):
            for name in names:
                path = Path(root) / name
                try:
                    stat = path.stat()
                except OSError:
                    continue
                files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        cutoff = time.time() - self.prune_after_s
        for mtime, size, path in sorted(files):
            if total + needed <= self.max_dir_bytes or mtime > cutoff:
                break
            try:
                path.unlink()
                total -= size
            except OSError:
                pass
        return total

    async def _refuse(self, send, visitor: str, refused: UploadRefused) -> None:
        logger.warning("upload refused for %s (%d): %s", visitor, refused.status, refused.message)
        body = refused.message.encode()
        await send({"type": "http.response.start", "status": refused.status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _content_length(scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _visitor(scope) -> str:
    forwarded = _header(scope, b"x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[0].strip()
    client = scope.get("client")
    return client[0] if client else "unknown"


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):.1f} MB"
