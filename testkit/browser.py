"""Drive the demo in a real browser: start the server, launch Debian's Chromium headless.

Shared by the end-to-end test (tests/test_demo_browser.py) and the screenshot script
(demos/screenshots.py). Playwright drives the system Chromium installed by
`scripts/install_browser.sh`; it never downloads a browser.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # the repository: demos/app.py lives there

CHROMIUM = Path(os.environ.get("EVOMM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class BrowserMissing(RuntimeError):
    pass


def require_chromium() -> Path:
    if not CHROMIUM.exists():
        raise BrowserMissing(
            f"Chromium not found at {CHROMIUM}: run `bash scripts/install_browser.sh` "
            "(apt-get install chromium) before the browser test"
        )
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def demo_server(args: list[str], env: dict[str, str] | None = None, timeout_s: float = 180.0,
                log_path: Path | None = None) -> Iterator[str]:
    """Run `python demos/app.py ARGS` on a free localhost port; yield its URL; stop it after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    environment = {**os.environ, "EVOMM_DEMO_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "demos" / "app.py"), "--host", "127.0.0.1", "--port", str(port), *args],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"demo server exited with code {process.returncode} (log: {log_path})")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"demo server did not answer at {url} within {timeout_s:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        stop_process(process)
        if log_path:
            log.close()


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a server process; kill it if it has not ended within 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000):
    """A Playwright page in headless system Chromium."""
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, locale="ja-JP")
            yield page
        finally:
            browser.close()


# --- steps a visitor takes (shared by the browser test and the screenshot script) -----------

ANSWER_TIMEOUT_MS = 180_000


def status_text(page) -> str:
    return page.locator("#vlm-status").inner_text()


def ask_vlm(page, image: Path | None, question: str | None, example: int | None = None,
            timeout_ms: int = ANSWER_TIMEOUT_MS) -> dict[str, str]:
    """Upload `image` (or click example number `example`), ask `question` (or the example's),
    wait until every model answered; return the answers by box id."""
    import re

    page.get_by_role("tab", name=re.compile("VLM")).click()
    before = page.locator("#vlm-image img").first.get_attribute("src") if page.locator("#vlm-image img").count() else None
    if example is not None:
        row = page.locator("#vlm-examples tr.tr-body").nth(example)
        example_question = row.locator("td").nth(1).inner_text().strip()
        row.click()
        page.wait_for_function(
            "q => document.querySelector('#vlm-question textarea')?.value === q", arg=example_question, timeout=30_000
        )
    else:
        page.locator("#vlm-image input[type=file]").set_input_files(str(image))
    page.wait_for_function(  # the new image is shown (not the previous one)
        "before => { const img = document.querySelector('#vlm-image img');"
        " return img && img.getAttribute('src') !== before && img.naturalWidth > 0; }",
        arg=before, timeout=30_000,
    )
    if question is not None:
        page.locator("#vlm-question textarea").fill(question)
    # the status may still say "done" from an earlier request: watch it leave "done" first
    page.evaluate(
        "() => { const el = document.querySelector('#vlm-status'); window.__evommLeftDone = false;"
        " new MutationObserver(() => { if (!el.innerText.startsWith('done')) window.__evommLeftDone = true; })"
        ".observe(el, {subtree: true, childList: true, characterData: true}); }"
    )
    page.locator("#vlm-ask").click()
    page.wait_for_function(
        "() => window.__evommLeftDone && document.querySelector('#vlm-status').innerText.startsWith('done')",
        timeout=timeout_ms,
    )
    answers = {}
    for box in page.locator("[id^=vlm-answer-]").all():
        answers[box.get_attribute("id")] = box.locator("textarea").input_value()
    return answers


def generate_images(page, prompt: str, timeout_ms: int = ANSWER_TIMEOUT_MS) -> None:
    """Draw `prompt` with every SDXL model; returns when every model's image is shown."""
    import re

    page.get_by_role("tab", name=re.compile("Text-to-image")).click()
    page.locator("#t2i-prompt textarea").fill(prompt)
    page.locator("#t2i-generate").click()
    page.wait_for_function(
        "() => { const boxes = [...document.querySelectorAll('[id^=t2i-image-]')];"
        " return boxes.length > 0 && boxes.every(b => b.querySelector('img')?.naturalWidth > 0); }",
        timeout=timeout_ms,
    )


def choose(page, dropdown_id: str, option: str) -> None:
    """Pick `option` in the gradio dropdown `#dropdown_id`."""
    page.locator(f"#{dropdown_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def open_dashboard(page, run: str | None = None, timeout_ms: int = 60_000) -> None:
    """Open the dashboard tab (on `run`, if given) and wait until a fitness plot is drawn."""
    page.get_by_role("tab", name="Evolution dashboard").click()
    if run is not None:
        page.locator("#run-select input").wait_for(timeout=timeout_ms)
        page.wait_for_function(  # the first run is shown on load; wait for it before switching
            "() => document.querySelector('#run-fitness img')?.naturalWidth > 0", timeout=timeout_ms
        )
        if page.locator("#run-select input").input_value() != run:
            before = page.locator("#run-fitness img").first.get_attribute("src")
            choose(page, "run-select", run)
            page.wait_for_function(
                "before => { const img = document.querySelector('#run-fitness img');"
                " return img && img.getAttribute('src') !== before && img.naturalWidth > 0; }",
                arg=before, timeout=timeout_ms,
            )
    page.wait_for_function(
        "() => document.querySelector('#run-fitness img')?.naturalWidth > 0", timeout=timeout_ms
    )
