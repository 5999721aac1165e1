"""Refuse, in one line, a request that names a server file no visitor uploaded.

A gradio event carries uploaded files as `{"path": ..., "meta": {"_type": "gradio.FileData"}}`.
gradio itself refuses a path outside its upload folder, but only deep in its preprocessing:
the visitor gets a generic error and the server log a stack trace for every probe.
`ForeignPathGuard` (ASGI middleware) reads an event's JSON body first and answers such a
request with a plain-text 400 and one log line; everything else passes unchanged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

#: gradio routes that take an event's input data as JSON
EVENT_ROUTES = ("/queue/join", "/run/predict", "/api/predict")
#: event bodies larger than this are refused outright (inputs are file references, not files)
MAX_EVENT_BYTES = 1024 * 1024
MESSAGE = "That file was not uploaded through this page; please upload it again."


class ForeignPathGuard:
    def __init__(self, app, *, upload_dir: str | Path):
        self.app = app
        self.upload_dir = Path(upload_dir).resolve()

    def _is_event(self, scope) -> bool:
        path = scope["path"].rstrip("/")
        return (scope["type"] == "http" and scope.get("method") == "POST"
                and (path.endswith(EVENT_ROUTES) or "/call/" in path))

    async def __call__(self, scope, receive, send):
        if not self._is_event(scope):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_EVENT_BYTES:
                return await self._refuse(send, scope, 413, "Request refused: the event is too large.")
        foreign = self._foreign_path(body)
        if foreign is not None:
            return await self._refuse(send, scope, 400, MESSAGE, foreign)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _foreign_path(self, body: bytes) -> str | None:
        """The first FileData path outside the upload folder, if any."""
        try:
            data = json.loads(body)
        except ValueError:
            return None  # not JSON: gradio answers it itself
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                meta = item.get("meta")
                path = item.get("path")
                if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData" and isinstance(path, str):
                    if not path.startswith(("http://", "https://")) and not self._uploaded(path):
                        return path
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
        return None

    def _uploaded(self, path: str) -> bool:
        try:
            return Path(path).resolve().is_relative_to(self.upload_dir)
        except (OSError, ValueError):
            return False

    async def _refuse(self, send, scope, status: int, message: str, path: str | None = None) -> None:
        client = scope.get("client") or ("unknown",)
        logger.warning("event refused for %s (%d): %s%s", client[0], status, message,
                       f" ({path!r})" if path else "")
        payload = message.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
