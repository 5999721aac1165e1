"""Events naming a server file that no visitor uploaded are refused in one line (ForeignPathGuard)."""

from __future__ import annotations

import json
import logging

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from evomm.demo.file_guard import ForeignPathGuard


def _client(upload_dir):
    async def join(request):  # stands in for gradio's queue: echoes the event it received
        return JSONResponse(await request.json())

    routes = [Route("/gradio_api/queue/join", join, methods=["POST"]),
              Route("/gradio_api/call/answer", join, methods=["POST"])]
    return TestClient(Starlette(routes=routes, middleware=[Middleware(ForeignPathGuard, upload_dir=upload_dir)]))


def _file(path):
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def test_a_path_outside_the_upload_folder_is_refused_in_one_line(tmp_path, caplog):
    uploads = tmp_path / "uploads"
    (uploads / "abc").mkdir(parents=True)
    client = _client(uploads)
    for route in ("/gradio_api/queue/join", "/gradio_api/call/answer"):
        for probe in ("/etc/passwd", str(uploads / ".." / "secret.txt"), str(tmp_path)):
            with caplog.at_level(logging.WARNING, logger="evomm.demo.file_guard"):
                response = client.post(route, json={"data": [_file(probe), "何色ですか？"], "fn_index": 0})
            assert response.status_code == 400 and "\n" not in response.text
            assert response.text.startswith("That file was not uploaded through this page")
    lines = [r for r in caplog.records if "event refused" in r.getMessage()]
    assert len(lines) == 6 and all(r.exc_info is None for r in lines)


def test_uploaded_files_urls_and_other_events_pass_unchanged(tmp_path):
    uploads = tmp_path / "uploads"
    (uploads / "abc").mkdir(parents=True)
    client = _client(uploads)
    event = {"data": [_file(uploads / "abc" / "img.png"), {"path": "https://example.org/x.png",
                                                           "meta": {"_type": "gradio.FileData"}}, "質問", 8],
             "fn_index": 0, "session_hash": "s"}
    response = client.post("/gradio_api/queue/join", json=event)
    assert response.status_code == 200 and response.json() == event  # the body reaches gradio intact
    big = client.post("/gradio_api/queue/join", content=json.dumps({"data": ["x" * (2 * 1024 * 1024)]}))
    assert big.status_code == 413
