"""Take a screenshot of each tab of the demo with headless Chromium (docs/screenshots/).

    python demos/screenshots.py [--out docs/screenshots] [app flags...]

Without app flags the app serves what `python demos/app.py` would (the shipped toy zoo and
runs); missing parts are replaced by the tiny stand-ins of `testkit.demo_fixtures`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evomm.demo.config import REPO_ROOT, config_from  # noqa: E402
from testkit import browser  # noqa: E402
from testkit.demo_fixtures import example_image, fabricate_run, tiny_sdxl_pipelines, tiny_vlm_pair  # noqa: E402

QUESTION = "この図形は何色ですか？"
PROMPT = "青い丸"


def stand_in_args(work: Path) -> tuple[list[str], Path, str | None]:
    """App flags for whatever the shipped assets lack, an image to upload and its question."""
    shipped = config_from(None, env={})
    args: list[str] = []
    if shipped.merged is None or len(shipped.parents) < 2:
        models = tiny_vlm_pair(work / "models")
        args += ["--merged", f"merged={models['merged']}",
                 "--parents", f"english_vlm={models['english_vlm']},japanese_lm={models['japanese_lm']}"]
    if not shipped.has_sdxl:
        sdxl = tiny_sdxl_pipelines(work / "sdxl")
        args += ["--sdxl", f"merged={sdxl['merged']}", "--sdxl-parents", f"japanese={sdxl['japanese']}"]
    if shipped.runs_root is None or not any(shipped.runs_root.iterdir()):
        fabricate_run(work / "runs" / "toy_evovlm_jp_seed0", seed=0)
        args += ["--runs-root", str(work / "runs")]
    from evomm.demo.config import example_items

    examples = example_items(shipped)
    if not examples:
        from evomm.zoo.data import write_dataset

        write_dataset(work / "examples", {"test": 8}, seed=0)
        args += ["--examples", str(work / "examples")]
        examples = example_items(config_from(None, env={"EVOMM_DEMO_EXAMPLES": str(work / "examples")}))
    if examples:
        return args, examples[0][0], examples[0][1]
    return args, example_image(work / "example.png", seed=1, size=128), None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    parser.add_argument("--image", type=Path, help="image to upload in the VLM tab")
    parser.add_argument("--question", help=f"question to ask (default: the example's, else {QUESTION})")
    parser.add_argument("--prompt", default=PROMPT)
    options, app_args = parser.parse_known_args(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="evomm-shots-") as tmp:
        work = Path(tmp)
        extra, image, question = stand_in_args(work) if not app_args else ([], None, None)
        image = options.image or image or example_image(work / "example.png", seed=1, size=128)
        question = options.question or question or QUESTION
        with browser.demo_server(app_args + extra, log_path=work / "server.log") as url:
            with browser.chromium_page(width=1400, height=900) as page:
                page.goto(url, wait_until="networkidle")
                answers = browser.ask_vlm(page, image, question)
                print("answers:", answers)
                page.screenshot(path=str(options.out / "vlm.png"), full_page=True)
                try:
                    browser.generate_images(page, options.prompt)
                except Exception as err:  # no SDXL configured: the tab says so, shoot it anyway
                    print(f"text-to-image: {err.__class__.__name__}", file=sys.stderr)
                page.screenshot(path=str(options.out / "text2image.png"), full_page=True)
                browser.open_dashboard(page)
                page.screenshot(path=str(options.out / "dashboard.png"), full_page=True)
    print(f"wrote {options.out}/vlm.png, text2image.png, dashboard.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
