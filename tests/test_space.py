"""The demo as a Hugging Face Space runs it: the front matter, the requirements, and a launch
from a fresh copy of the repository configured by environment variables alone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md has no front matter: a Space would not know what to run"
    return yaml.safe_load(match.group(1))


def test_front_matter_names_the_app_and_the_locked_gradio():
    meta = _front_matter()
    assert meta["sdk"] == "gradio" and (ROOT / meta["app_file"]).is_file()
    locked = re.search(r"^gradio==([\d.]+)", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    assert meta["sdk_version"] == locked  # the Space runs the gradio our tests ran
    assert str(meta["python_version"]) == "3.11"


def test_space_requirements_install_the_lock():
    # requirements.txt -> demos/requirements.txt -> -c ../requirements.lock and the package itself
    lines = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines == ["-r demos/requirements.txt"]
    demo = [l.strip() for l in (ROOT / "demos" / "requirements.txt").read_text().splitlines()
            if l.strip() and not l.startswith("#")]
    assert "-c ../requirements.lock" in demo and any(l.startswith("-e .[") and "demo" in l for l in demo)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "-q", "-r",
                             "requirements.txt"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def _fresh_copy(dest: Path) -> Path:
    """What a Space clones: the repository's tracked files (and new ones not ignored)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


@pytest.mark.slow
def test_the_space_starts_from_a_fresh_copy_and_answers(tmp_path):
    from gradio_client import Client, handle_file

    from testkit.browser import free_port, stop_process

    repo = _fresh_copy(tmp_path / "space")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVOMM_DEMO_", "GRADIO_"))}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", EVOMM_DEMO_THREADS="1")
    log = open(tmp_path / "space.log", "w")
    process = subprocess.Popen([sys.executable, _front_matter()["app_file"]], cwd=repo, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        client = None
        deadline = time.monotonic() + 180
        while client is None:
            assert process.poll() is None, (tmp_path / "space.log").read_text()[-3000:]
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, "the Space did not start within 180 s"
                time.sleep(1)
        from evomm.demo.config import config_from, example_items

        config = config_from(None, env={}, base=repo)
        image, question = example_items(config)[0]
        assert config.merged.path.is_relative_to(repo) and config.merged.path.name == "evovlm_jp"
        status, merged, *parents = client.predict(handle_file(str(image)), question, 24, 0.0, 1.0, 1.0, 0,
                                                  api_name="/answer")
        assert status.startswith("done") and len(parents) == 2
        import json

        records = [json.loads(line) for line in (config.examples_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()]
        record = next(r for r in records if r["question"] == question and r["image"].endswith(image.name))
        assert merged.strip().startswith(record["answer"].split("。")[0] + "。"), (merged, record["answer"])
    finally:
        stop_process(process)
        log.close()
