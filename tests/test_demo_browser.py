"""End to end in a real browser: the demo answers in Japanese, shows a run, draws an image.

Playwright drives Debian's Chromium headless (installed by scripts/install_browser.sh; this
test fails, rather than skips, when it is missing) against `python demos/app.py` started on
a free localhost port. Models: the shipped toy zoo when it is complete, else tiny stand-ins
(`testkit.demo_fixtures`) whose vocabulary is Japanese.
"""

from __future__ import annotations

import re

import pytest

from testkit import browser
from evomm.demo.config import config_from
from testkit.demo_fixtures import example_image, short_evolution, tiny_sdxl_pipelines, tiny_vlm_pair
from evomm.metrics.language import ScriptLanguageDetector
from testkit.toy_run import short_toy_run

QUESTION = "この図形は何色ですか？"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    try:
        browser.require_chromium()
    except browser.BrowserMissing as err:
        pytest.fail(str(err), pytrace=False)
    root = tmp_path_factory.mktemp("demo_browser")
    shipped = config_from(None, env={})
    args: list[str] = []
    if shipped.merged is not None and len(shipped.parents) >= 2:  # the toy zoo and its merge
        merged, parents = shipped.merged, shipped.parents
        args += ["--merged", f"{merged.name}={merged.path}",
                 "--parents", ",".join(f"{p.name}={p.path}" for p in parents)]
    else:
        models = tiny_vlm_pair(root / "models")
        args += ["--merged", f"merged={models['merged']}",
                 "--parents", f"english_vlm={models['english_vlm']},japanese_lm={models['japanese_lm']}"]
    if shipped.has_sdxl:  # the toy SDXL zoo (and an evolved pipeline, if any)
        if shipped.sdxl_merged is not None:
            args += ["--sdxl", f"{shipped.sdxl_merged.name}={shipped.sdxl_merged.path}"]
        if shipped.sdxl_parents:
            args += ["--sdxl-parents", ",".join(f"{p.name}={p.path}" for p in shipped.sdxl_parents)]
    else:
        sdxl = tiny_sdxl_pipelines(root / "sdxl")
        args += ["--sdxl", f"merged={sdxl['merged']}", "--sdxl-parents", f"japanese={sdxl['japanese']}"]
    if not shipped.examples_dir:
        from evomm.zoo.data import write_dataset

        write_dataset(root / "examples", {"test": 3}, seed=0)  # the zoo's JSONL+PNG layout
        args += ["--examples", str(root / "examples")]
    short_evolution(root / "runs" / "short_evolution", root / "evolution_sources")  # the real engine
    # the README's main command, shortened: PS, DFS, PS+DFS and the held-out report on the toy zoo
    short_toy_run(root / "runs" / "toy_evolution", root / "toy_work")
    args += ["--runs-root", str(root / "runs")]
    image = example_image(root / "upload" / "circle.png", seed=1)
    not_image = root / "upload" / "notes.png"
    not_image.write_text("this is not an image")
    log = root / "server.log"
    with browser.demo_server(args, log_path=log) as url:
        with browser.chromium_page() as page:
            page.goto(url, wait_until="networkidle")
            yield page, image, not_image, log


def test_vlm_tab_answers_a_japanese_question_in_japanese(setup):
    page, image, not_image, log = setup
    answers = browser.ask_vlm(page, image, QUESTION)
    merged = answers.pop("vlm-answer-merged")
    assert merged.strip(), f"empty answer; server log:\n{log.read_text()[-3000:]}"
    assert ScriptLanguageDetector().is_japanese(merged), f"not Japanese: {merged!r}"
    assert len(answers) == 2 and all(a.strip() for a in answers.values())  # both parents, side by side


def test_first_example_is_answered_correctly_by_the_shipped_merged_model(setup):
    # a fresh clone serves the shipped evolved toy VLM (assets/evovlm_jp) by default; its
    # answer to the first example must be right, not only Japanese: the held-out answer's
    # first sentence (the asked value, e.g. 「円です。」)
    import json

    from evomm.demo.config import example_items

    page, *_ = setup
    shipped = config_from(None, env={})
    assert shipped.merged is not None and shipped.merged.path.name == "evovlm_jp"
    first_image, first_question = example_items(shipped)[0]  # the examples table's first row
    answers = browser.ask_vlm(page, None, None, example=0)
    assert page.locator("#vlm-question textarea").input_value() == first_question
    records = [json.loads(line) for line in (shipped.examples_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    record = next(r for r in records if r["question"] == first_question and r["image"].endswith(first_image.name))
    expected = record["answer"].split("。")[0] + "。"
    assert answers["vlm-answer-merged"].strip().startswith(expected), (answers, expected)


def test_vlm_tab_example_fills_image_and_question(setup):
    page, *_ = setup
    answers = browser.ask_vlm(page, None, None, example=1)
    question = page.locator("#vlm-question textarea").input_value()
    assert ScriptLanguageDetector().is_japanese(question)  # the example's Japanese question
    assert ScriptLanguageDetector().is_japanese(answers["vlm-answer-merged"])


def test_vlm_tab_refuses_a_non_image_with_a_message_and_keeps_serving(setup):
    page, image, not_image, log = setup
    page.get_by_role("tab", name=re.compile("VLM")).click()
    page.locator("#vlm-image input[type=file]").set_input_files(str(not_image))
    page.get_by_text(re.compile("not an image this demo accepts")).first.wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
    # the page still works: a valid image and question get answered
    answers = browser.ask_vlm(page, image, "形は何ですか？")
    assert answers["vlm-answer-merged"].strip()


def test_dashboard_shows_an_evolution_run(setup):
    page, *_ = setup
    browser.open_dashboard(page, run="short_evolution")
    page.wait_for_function("() => document.querySelector('#run-genome img')?.naturalWidth > 0", timeout=30_000)
    table = page.locator("#run-table")
    table.get_by_text("best_fitness").first.wait_for(timeout=30_000)  # best fitness per stage
    assert re.search(r"\bps_dfs\b", table.inner_text())
    assert "type: dfs" in page.locator("#run-recipe").inner_text()
    assert page.locator("#run-download").is_visible()
    assert re.search(r"DFS path — \d+ layers: ", page.locator("#run-dfs").inner_text())
    # another stage of the same run: the PS recipe replaces the DFS one
    browser.choose(page, "run-stage", "ps")
    page.wait_for_function(
        "() => (document.querySelector('#run-recipe')?.innerText || '').includes('merge_method')", timeout=30_000
    )


def test_dashboard_shows_a_toy_evolution_with_its_plot_and_table(setup):
    page, *_ = setup
    browser.open_dashboard(page, run="toy_evolution")  # waits until the fitness plot is drawn
    table = page.locator("#run-table")
    table.get_by_text("keyword_acc").first.wait_for(timeout=30_000)
    text = table.inner_text()
    assert all(name in text for name in ("english_vlm", "japanese_lm", "best_uniform", "ps_dfs"))
    page.get_by_text("report.md (click to open)").click()
    page.locator("#run-report").get_by_text("held-out results").first.wait_for(timeout=30_000)


def test_text_to_image_tab_generates_an_image(setup):
    page, *_ = setup
    browser.generate_images(page, "赤い四角")
    widths = page.evaluate("() => [...document.querySelectorAll('[id^=t2i-image-] img')].map(i => i.naturalWidth)")
    assert len(widths) >= 2 and min(widths) >= 64  # every model drew (merged and parents, or parents)
