"""Request-level upload limits of the public demo (evomm.demo.upload_budget.UploadBudget)."""

from __future__ import annotations

import logging
import os

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from evomm.demo.upload_budget import UploadBudget

MB = 1024 * 1024


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _client(upload_dir, clock, **limits):
    async def upload(request):  # stands in for gradio's route: stores every file it receives
        form = await request.form()
        for i, item in enumerate(form.getlist("files")):
            (upload_dir / f"{os.urandom(6).hex()}_{i}").write_bytes(await item.read())
        return PlainTextResponse("ok")

    options = dict(max_request_bytes=10 * MB, max_visitor_bytes=64 * MB, visitor_window_s=600,
                   upload_dir=upload_dir, max_dir_bytes=512 * MB, prune_after_s=600, clock=clock)
    options.update(limits)
    app = Starlette(routes=[Route("/gradio_api/upload", upload, methods=["POST"])],
                    middleware=[Middleware(UploadBudget, **options)])
    return TestClient(app)


def _files(*sizes):
    return [("files", (f"f{i}.png", b"\x89PNG" + b"\0" * (size - 4), "image/png")) for i, size in enumerate(sizes)]


def test_one_request_with_three_7mb_files_is_refused_in_one_line(tmp_path, caplog):
    client = _client(tmp_path, Clock())
    with caplog.at_level(logging.WARNING, logger="evomm.demo.upload_budget"):
        response = client.post("/gradio_api/upload", files=_files(7 * MB, 7 * MB, 7 * MB))
    assert response.status_code == 413
    assert response.text.startswith("Upload refused: 21.0 MB in one request") and "\n" not in response.text
    assert not list(tmp_path.iterdir())  # nothing was written
    refusals = [r for r in caplog.records if "upload refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].exc_info is None and "\n" not in refusals[0].getMessage()
    assert client.post("/gradio_api/upload", files=_files(7 * MB)).status_code == 200  # one file is fine


def test_a_visitor_has_a_budget_over_time(tmp_path):
    clock = Clock()
    client = _client(tmp_path, clock, max_visitor_bytes=10 * MB)
    assert client.post("/gradio_api/upload", files=_files(6 * MB)).status_code == 200
    refused = client.post("/gradio_api/upload", files=_files(6 * MB))
    assert refused.status_code == 429 and "in the last 10 minutes" in refused.text
    other = client.post("/gradio_api/upload", files=_files(6 * MB), headers={"x-forwarded-for": "10.0.0.9"})
    assert other.status_code == 200  # another visitor (behind the Space's proxy) has their own budget
    clock.now += 601
    assert client.post("/gradio_api/upload", files=_files(6 * MB)).status_code == 200


def test_the_upload_folder_stays_bounded(tmp_path):
    client = _client(tmp_path, Clock(), max_dir_bytes=3 * MB, prune_after_s=0, max_visitor_bytes=1024 * MB)
    for _ in range(12):
        assert client.post("/gradio_api/upload", files=_files(MB // 2, MB // 2)).status_code == 200
        assert sum(f.stat().st_size for f in tmp_path.iterdir()) <= 3 * MB
    # files younger than prune_after_s are never deleted: then the upload is refused instead
    young = _client(tmp_path, Clock(), max_dir_bytes=3 * MB, prune_after_s=3600)
    full = young.post("/gradio_api/upload", files=_files(2 * MB))
    assert full.status_code == 503 and "upload space is full" in full.text


def test_a_body_without_a_length_is_cut_off_while_streaming(tmp_path):
    from starlette.requests import ClientDisconnect

    seen = []

    async def upload(request):
        read = 0
        try:
            async for chunk in request.stream():
                read += len(chunk)
        except ClientDisconnect:
            seen.append(("cut", read))
            return PlainTextResponse("cut", status_code=400)
        seen.append(("whole", read))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/gradio_api/upload", upload, methods=["POST"])],
                    middleware=[Middleware(UploadBudget, max_request_bytes=MB, max_visitor_bytes=64 * MB,
                                           visitor_window_s=600, upload_dir=tmp_path, max_dir_bytes=512 * MB,
                                           prune_after_s=600)])

    def chunks():  # a streamed body: no Content-Length header
        for _ in range(8):
            yield b"x" * (MB // 2)

    TestClient(app).post("/gradio_api/upload", content=chunks())
    assert seen and seen[0][0] == "cut" and seen[0][1] <= MB
