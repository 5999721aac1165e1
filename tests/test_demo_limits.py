"""The demo's public-Space limits: each refusal is a clear message and the app keeps serving."""

from __future__ import annotations

import json
import os
import socket
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from evomm.demo.config import DemoConfig, ModelRef, config_from
from testkit.demo_fixtures import example_image, fabricate_run, tiny_vlm_pair
from evomm.demo.handlers import DemoHandlers
from evomm.demo.limits import DemoInputError, DemoLimits, check_float, check_int, check_prompt, open_image_upload
from evomm.demo.paths import DemoPathError, resolve_within
from evomm.demo.runs import list_runs, load_run, results_table
from evomm.errors import ConfigError
from evomm.metrics.language import ScriptLanguageDetector

LIMITS = DemoLimits(max_upload_bytes=200_000, max_image_pixels=512 * 512, max_prompt_chars=40, max_new_tokens=16)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny, valid-looking PNG that *declares* width x height (a decompression bomb)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel data is decoded."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("pixel data was decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# --- uploads ---------------------------------------------------------------------------------

def test_a_valid_image_is_opened_as_rgb(tmp_path):
    path = example_image(tmp_path / "ok.png", seed=1, size=48)
    image = open_image_upload(path, LIMITS)
    assert image.mode == "RGB" and image.size == (48, 48)


def test_non_image_upload_is_refused_with_a_message(tmp_path):
    path = tmp_path / "notes.png"  # an image's name does not make it an image
    path.write_text("#!/bin/sh\necho hello\n")
    with pytest.raises(DemoInputError, match="not an image"):
        open_image_upload(path, LIMITS)


def test_image_formats_outside_the_allowed_list_are_refused(tmp_path):
    path = tmp_path / "image.tiff"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(DemoInputError, match="format TIFF is not accepted"):
        open_image_upload(path, LIMITS)


def test_oversized_file_is_refused_before_reading_it(tmp_path, no_decoding):
    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG" + os.urandom(LIMITS.max_upload_bytes))
    with pytest.raises(DemoInputError, match=r"too large \(0\.2 MB\); the limit is 0\.2 MB"):
        open_image_upload(path, LIMITS)


def test_too_many_pixels_is_refused_from_the_header_without_decoding(tmp_path, no_decoding):
    path = _png_header_only(tmp_path / "wide.png", 4000, 300)  # 1.2 M pixels > 262,144
    assert path.stat().st_size < 200
    with pytest.raises(DemoInputError, match=r"4000x300 pixels; the limit is 262,144 pixels"):
        open_image_upload(path, LIMITS)


def test_decompression_bomb_beyond_pil_limit_is_refused(tmp_path, no_decoding):
    path = _png_header_only(tmp_path / "bomb.png", 60_000, 60_000)  # 3.6 G pixels in ~100 bytes
    with pytest.raises(DemoInputError, match="too many pixels|too large"):
        open_image_upload(path, DemoLimits(max_image_pixels=Image.MAX_IMAGE_PIXELS * 10))


def test_truncated_image_is_refused(tmp_path):
    path = example_image(tmp_path / "ok.png", size=64)
    path.write_bytes(path.read_bytes()[:120])
    with pytest.raises(DemoInputError, match="damaged|could not"):
        open_image_upload(path, LIMITS)


# --- prompts and settings --------------------------------------------------------------------

def test_over_long_prompt_is_refused_with_its_length():
    with pytest.raises(DemoInputError, match="too long: 41 characters; the limit is 40"):
        check_prompt("あ" * 41, LIMITS)
    assert check_prompt("  " + "あ" * 40 + "\n", LIMITS) == "あ" * 40


def test_empty_or_non_text_prompt_is_refused():
    with pytest.raises(DemoInputError, match="Please enter a question"):
        check_prompt("   ", LIMITS)
    with pytest.raises(DemoInputError, match="must be text"):
        check_prompt(["list"], LIMITS)


def test_generation_settings_outside_bounds_are_refused():
    assert check_int(16, "Max new tokens", 1, 16) == 16
    with pytest.raises(DemoInputError, match="between 1 and 16 \\(got 1000\\)"):
        check_int(1000, "Max new tokens", 1, 16)
    with pytest.raises(DemoInputError, match="whole number"):
        check_int(2.5, "Steps", 1, 8)
    with pytest.raises(DemoInputError, match="must be a number"):
        check_float("lots", "Temperature", 0, 2)
    with pytest.raises(DemoInputError, match="between"):
        check_float(float("nan"), "Temperature", 0, 2)


# --- paths and runs --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("runs_root")
    root = tmp_path / "runs"
    fabricate_run(root / "toy_a", seed=0, generations=2, plots=False)
    fabricate_run(root / "nested" / "toy_b", seed=1, generations=2)
    (root / "not_a_run").mkdir()
    outside = fabricate_run(tmp_path / "secret_run", seed=2, generations=2, plots=False)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root


def test_runs_are_listed_and_symlinks_out_of_the_root_are_not(runs_root):
    assert sorted(list_runs(runs_root)) == ["nested/toy_b", "toy_a"]


@pytest.mark.parametrize("name", ["../secret_run", "/etc", "escape", "toy_a/../../secret_run", "nested/../../x"])
def test_paths_outside_the_runs_root_are_refused(runs_root, name):
    with pytest.raises(DemoPathError, match="not a run under the configured runs root"):
        load_run(runs_root, name)


def test_a_directory_that_is_not_a_run_is_refused(runs_root):
    with pytest.raises(DemoPathError, match="'not_a_run' is not a run"):
        load_run(runs_root, "not_a_run")
    with pytest.raises(DemoPathError, match="choose a run"):
        resolve_within(runs_root, "")


def test_a_run_shows_plots_recipe_table_and_dfs_path(runs_root):
    view = load_run(runs_root, "nested/toy_b")
    assert view.stages == ["ps", "dfs", "ps_dfs"] and view.stage == "ps_dfs"  # the last stage by default
    assert view.fitness_plot == (runs_root / "nested/toy_b/ps_dfs/fitness.png").resolve()
    assert view.genome_plot.name == "genome.png"
    assert "type: dfs" in view.recipe_text
    assert view.dfs_summary.startswith(f"{view.recipe_text.count('- - ')} layers: ")
    assert view.table_headers == ["model", "rougeL", "rougeL_strict", "keyword_acc"]
    assert [row[0] for row in view.table_rows][:2] == ["english_vlm", "japanese_lm"]
    assert view.notes == []
    ps = load_run(runs_root, "nested/toy_b", "ps")
    assert "merge_method: task_arithmetic" in ps.recipe_text and ps.dfs_summary == ""


@pytest.mark.parametrize("stage", ["..", "../../secret_run", "/etc", "model"])
def test_a_stage_must_be_one_of_the_runs_stages(runs_root, stage):
    with pytest.raises(DemoPathError, match="is not a stage of run"):
        load_run(runs_root, "toy_a", stage)


def test_results_table_orders_known_models_first_and_skips_non_numbers():
    headers, rows = results_table({"models": {
        "zeta": {"rougeL": 1, "n": 400, "seconds": 3.2},
        "ps": {"keyword_acc": 50.0, "rougeL": 2.345, "note": "x", "by_type": {"colour": 90.04, "shape": 95}},
        "english_vlm": {"rougeL": 3, "ok": True},
    }})
    assert headers == ["model", "rougeL", "keyword_acc", "colour %", "shape %"]
    assert rows == [["english_vlm", 3.0, None, None, None], ["ps", 2.35, 50.0, 90.0, 95.0],
                    ["zeta", 1.0, None, None, None]]


def test_a_run_with_missing_files_says_what_is_missing(tmp_path):
    run = tmp_path / "runs" / "partial"
    run.mkdir(parents=True)
    (run / "evaluations.jsonl").write_text(json.dumps({"generation": 0, "fitness": 1.0}) + "\n")
    view = load_run(tmp_path / "runs", "partial")
    assert view.stages == ["."] and view.fitness_plot is None and view.table_rows == []
    assert "This stage has no fitness.png yet." in view.notes
    assert "This run has no results.json (held-out evaluation) yet." in view.notes


# --- configuration ---------------------------------------------------------------------------

def test_config_reads_flags_then_environment(tmp_path):
    for name in ("m", "p1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "runs").mkdir()
    env = {"EVOMM_DEMO_MERGED": str(tmp_path / "m"), "EVOMM_DEMO_PARENTS": f"英語VLM={tmp_path / 'p1'}",
           "EVOMM_DEMO_RUNS_ROOT": str(tmp_path / "runs"), "EVOMM_DEMO_THREADS": "2"}
    config = config_from(None, env=env, base=tmp_path)
    assert config.merged.path == (tmp_path / "m").resolve()
    assert [(p.name, p.path) for p in config.parents] == [("英語VLM", (tmp_path / "p1").resolve())]
    assert config.runs_root == (tmp_path / "runs").resolve() and config.threads == 2
    assert config.sdxl_merged is None and not config.has_sdxl


def test_config_rejects_missing_model_dirs_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="model directory not found: 'nowhere'"):
        config_from(None, env={"EVOMM_DEMO_MERGED": "nowhere"}, base=tmp_path)
    with pytest.raises(ConfigError, match="template 'fancy': use 'chat', one of"):
        config_from(None, env={"EVOMM_DEMO_TEMPLATE": "fancy"}, base=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="'empty' has no model_index.json"):
        config_from(None, env={"EVOMM_DEMO_SDXL": "empty"}, base=tmp_path)


# --- the handlers and the running app --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    models = tiny_vlm_pair(root / "models")
    examples = root / "examples"
    example_image(examples / "circle.png", seed=1)
    fabricate_run(root / "runs" / "toy", seed=0, generations=3)
    config = DemoConfig(
        merged=ModelRef(name="merged", path=models["merged"]),
        parents=[ModelRef(name=n, path=models[n]) for n in ("english_vlm", "japanese_lm")],
        runs_root=root / "runs",
        examples_dir=examples,
        limits=LIMITS,
    )
    return config, root


def test_handlers_refuse_bad_input_before_touching_models(tiny_setup, tmp_path):
    config, root = tiny_setup
    handlers = DemoHandlers(config, upload_roots=[tmp_path])
    good = str(root / "examples" / "circle.png")
    args = dict(max_new_tokens=8, temperature=0, top_p=1, repetition_penalty=1, seed=0)
    with pytest.raises(DemoInputError, match="too long"):
        next(handlers.answer(good, "長" * 41, **args))
    with pytest.raises(DemoInputError, match="upload an image"):
        next(handlers.answer(None, "何色？", **args))
    with pytest.raises(DemoInputError, match="Max new tokens must be between 1 and 16"):
        next(handlers.answer(good, "何色？", **{**args, "max_new_tokens": 10_000}))
    stray = example_image(root / "stray.png")  # a real image, but not an upload
    with pytest.raises(DemoPathError, match="not uploaded through this page"):
        next(handlers.answer(str(stray), "何色？", **args))
    assert handlers.chat_models._models == {}  # nothing was loaded for refused requests
    with pytest.raises(DemoInputError, match="No SDXL model is configured"):
        handlers.generate_images("青い丸", 4, 0, 0.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_running_app_answers_with_messages_and_keeps_serving(tiny_setup, tmp_path):
    """Through the real server (gradio_client): each bad request gets its message, then a good one works."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from evomm.demo.app import launch_app

    config, root = tiny_setup
    port = _free_port()
    app = launch_app(config, host="127.0.0.1", port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        settings = (8, 0.0, 1.0, 1.0, 0)
        not_image = tmp_path / "payload.png"
        not_image.write_text("<?php echo 1; ?>")
        oversized = Image.effect_noise((600, 600), 64).convert("RGB")  # 360,000 px > 262,144
        oversized.save(tmp_path / "large.jpg", quality=50)
        assert (tmp_path / "large.jpg").stat().st_size < LIMITS.max_upload_bytes

        cases = [
            (handle_file(str(not_image)), "何色ですか？", "not an image"),
            (handle_file(str(tmp_path / "large.jpg")), "何色ですか？", "600x600 pixels"),
            (handle_file(str(root / "examples" / "circle.png")), "長" * 41, "too long: 41 characters"),
        ]
        for image, question, message in cases:
            with pytest.raises(AppError, match=message):
                client.predict(image, question, *settings, api_name="/answer")
        with pytest.raises(AppError, match="not in the list of choices|not a run"):
            client.predict("../../etc", api_name="/open_run")
        import httpx  # the server itself refuses an oversized upload (gradio_client checks on its side)

        big = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload",
                         files={"files": ("big.png", b"\x89PNG" + os.urandom(LIMITS.max_upload_bytes + 1), "image/png")})
        assert big.status_code == 413 and "maximum allowed size of 200000 bytes" in big.text
        three = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload",  # one request, 21 MB in all
                           files=[("files", (f"{i}.png", b"\x89PNG" + b"\0" * (7 * 1024 * 1024), "image/png"))
                                  for i in range(3)])
        assert three.status_code == 413 and three.text.startswith("Upload refused: 21.0 MB in one request")

        status, merged, english, japanese = client.predict(
            handle_file(str(root / "examples" / "circle.png")), "この図形は何色ですか？", *settings, api_name="/answer"
        )
        assert status.startswith("done") and merged and english and japanese
        run_outputs = client.predict("toy", api_name="/open_run")
        assert "type: dfs" in run_outputs[7]  # stage, notes, fitness, genome, dfs, table, grid, recipe
        with pytest.raises(AppError, match="not a stage of run|not in the list of choices"):
            client.predict("toy", "../..", api_name="/open_stage")
    finally:
        app.close()


def test_model_events_share_one_bounded_queue(tiny_setup):
    from evomm.demo.ui import CONCURRENCY_ID, build_app

    config, _ = tiny_setup
    config = config.model_copy(update={"limits": LIMITS.model_copy(update={"queue_size": 5, "concurrency": 2})})
    app = build_app(config)
    assert app._queue.max_size == 5
    answer = next(fn for fn in app.fns.values() if fn.api_name == "answer")
    assert (answer.concurrency_limit, answer.concurrency_id) == (2, CONCURRENCY_ID)
    assert answer.preprocess is False  # images reach the handler unopened: checked before decoding


def test_zoo_prompt_layout_matches_the_zoo_training_format(tmp_path):
    from evomm.demo.chat import format_question
    from evomm.demo.config import zoo_prompt
    from evomm.zoo.train import PROMPT, format_prompt

    (tmp_path / "zoo" / "english_vlm").mkdir(parents=True)
    (tmp_path / "zoo" / "build_info.json").write_text(json.dumps({"prompt": PROMPT}))
    template = zoo_prompt([ModelRef(name="en", path=tmp_path / "zoo" / "english_vlm")])
    assert template == PROMPT
    question = "この図形は何色ですか？"
    assert format_question(template, question, "<image>") == format_prompt(question, "<image>")
    assert format_question(template, question, None) == format_prompt(question)


def test_vlm_prompt_is_the_toy_pipelines_fitness_prompt(tiny_setup):
    """The demo asks the merged model exactly as evolution scored it (evomm.fitness.vqa_rouge_ja)."""
    from evomm.demo.chat import ChatModel
    from evomm.fitness.vqa_rouge_ja import DEFAULT_PROMPT, PromptVLMGenerator

    config, _ = tiny_setup
    model = ChatModel(config.merged, template=DEFAULT_PROMPT)
    scorer = PromptVLMGenerator(model.model, model.processor, prompt=DEFAULT_PROMPT)
    question = "この図形は何色ですか？"
    assert model.prompt(question) == scorer.build_prompt(question) == f"USER: <image> {question} ASSISTANT:"
    text_only = ChatModel(config.parents[1], template=DEFAULT_PROMPT)
    assert text_only.prompt(question) == f"USER: {question} ASSISTANT:"


def test_examples_from_a_zoo_dataset_pair_images_with_japanese_questions(tmp_path):
    from evomm.demo.config import example_items
    from evomm.zoo.data import write_dataset

    write_dataset(tmp_path / "data", {"test": 3}, seed=0)
    items = example_items(DemoConfig(examples_dir=tmp_path / "data"))
    assert len(items) == 3
    assert all(p.is_file() and p.is_relative_to(tmp_path / "data") for p, _ in items)
    assert all(ScriptLanguageDetector().is_japanese(q) for _, q in items)
    assert len({q for _, q in items}) == 3  # one per question type

    plain = tmp_path / "plain"
    example_image(plain / "b.png")
    example_image(plain / "a.png")
    assert [(p.name, q) for p, q in example_items(DemoConfig(examples_dir=plain))] == [("a.png", None), ("b.png", None)]


def test_a_saved_dfs_merge_of_a_llava_loads_and_answers(tiny_setup, tmp_path):
    """DFS merges are saved as a LLaVA around an `evomm_dfs` decoder; the demo must serve them too."""
    from evomm.demo.chat import GenerationSettings, ModelCache, compare, sees_images
    from evomm.search.export import save_dfs_model

    config, root = tiny_setup
    spec = {"type": "dfs", "sources": [str(config.merged.path), str(config.parents[1].path)],
            "path": [[0, 0], [1, 1], [0, 2], [1, 3], [0, 3]], "scales": [1.0, 1.1, 0.9, 1.0, 1.2]}
    model_dir = save_dfs_model(spec, tmp_path / "dfs_model")
    assert sees_images(model_dir)
    image = Image.open(root / "examples" / "circle.png").convert("RGB")
    answers = list(compare(ModelCache(), [ModelRef(name="dfs", path=model_dir)], image, "何色ですか？",
                           GenerationSettings(max_new_tokens=6)))
    assert ScriptLanguageDetector().is_japanese(answers[-1][0])


def test_text_to_image_tab_says_when_no_sdxl_model_is_configured(tiny_setup):
    from evomm.demo.ui import build_app

    config, _ = tiny_setup
    assert not config.has_sdxl
    app = build_app(config)
    by_id = {block.elem_id: block for block in app.blocks.values() if getattr(block, "elem_id", None)}
    assert "No SDXL model is configured" in by_id["t2i-missing"].value
    assert by_id["t2i-generate"].interactive is False


def test_without_a_merged_model_the_newest_runs_best_vlm_is_served(tiny_setup, tmp_path):
    import shutil

    config, _ = tiny_setup
    run = fabricate_run(tmp_path / "runs" / "toy", seed=0, generations=2, plots=False)
    for stage in ("ps", "dfs", "ps_dfs"):
        shutil.copytree(config.merged.path, run / stage / "model")
    env = {"EVOMM_DEMO_RUNS_ROOT": str(tmp_path / "runs")}
    chosen = config_from(None, env=env, base=tmp_path)
    assert chosen.merged.path == (run / "ps_dfs" / "model").resolve()  # best keyword_acc of the three
    assert chosen.merged.name == "evolved (toy/ps_dfs)"
    results = json.loads((run / "results.json").read_text())
    results["models"]["dfs"]["keyword_acc"] = 99.0
    (run / "results.json").write_text(json.dumps(results))
    assert config_from(None, env=env, base=tmp_path).merged.name == "evolved (toy/dfs)"
    (run / "results.json").unlink()  # no held-out numbers: the last stage
    assert config_from(None, env=env, base=tmp_path).merged.name == "evolved (toy/ps_dfs)"


def test_app_entry_point_refuses_a_bad_config_with_one_line(capsys):
    import importlib.util

    from evomm.demo.config import REPO_ROOT

    spec = importlib.util.spec_from_file_location("demo_app", REPO_ROOT / "demos" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--merged", "/nonexistent/model"]) == 2
    assert capsys.readouterr().err.strip() == "error: model directory not found: '/nonexistent/model'"


def test_sdxl_examples_are_the_zoos_held_out_japanese_prompts(tmp_path):
    from evomm.demo.config import sdxl_example_prompts

    for name in ("japanese", "fewstep"):
        (tmp_path / "sdxl_zoo" / name).mkdir(parents=True)
        (tmp_path / "sdxl_zoo" / name / "model_index.json").write_text("{}")
    prompts = {"splits": {"fitness": [{"text": "赤い丸"}], "heldout": [{"text": f"青い丸 {i}"} for i in range(12)]}}
    (tmp_path / "sdxl_zoo" / "prompts.json").write_text(json.dumps(prompts, ensure_ascii=False))
    config = config_from(None, env={"EVOMM_DEMO_SDXL_PARENTS": "sdxl_zoo/japanese,sdxl_zoo/fewstep"}, base=tmp_path)
    assert [p.name for p in config.sdxl_parents] == ["japanese", "fewstep"] and config.sdxl_merged is None
    assert sdxl_example_prompts(config) == [f"青い丸 {i}" for i in (0, 2, 4, 6, 8, 10)]
