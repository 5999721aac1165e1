"""The Gradio app: VLM comparison, text-to-image comparison, evolution dashboard.

Layout and wiring only; the logic lives in `evomm.demo.handlers`. Every handler is wrapped
by `_as_messages`, so visitors see one-line messages (gr.Error / gr.Warning), never a stack
trace. Image inputs are passed to handlers unprocessed (`preprocess=False`): gradio has
already confined the file to its upload folder, and the demo checks size and pixel count
itself *before* decoding, which gradio's own image preprocessing would not.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from pathlib import Path

import gradio as gr
from PIL import Image

from evomm.demo.chat import sees_images
from evomm.demo.config import ENV_RUNS_ROOT, ENV_SDXL, DemoConfig, example_items, sdxl_example_prompts
from evomm.demo.handlers import DemoHandlers, DemoInternalError
from evomm.demo.limits import DemoInputError

logger = logging.getLogger(__name__)

DEFAULT_QUESTION = "この画像には何が描かれていますか？"
DEFAULT_T2I_PROMPT = "青い丸"
CONCURRENCY_ID = "models"  # VLM and text-to-image share the CPU/GPU: one queue for both
CSS = """
.answer textarea { font-size: 1.05rem; }
#t2i-missing { border-left: 4px solid #d97706; padding-left: 0.75rem; }
"""


def _visitor_message(err: Exception) -> gr.Error:
    if isinstance(err, (DemoInputError, DemoInternalError)):
        return gr.Error(str(err), print_exception=False)
    logger.exception("unexpected error in a demo handler")
    return gr.Error("Something went wrong on the server; please try again.", print_exception=False)


def _as_messages(fn):
    """Turn every exception of `fn` (a function or generator) into a visitor message."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as err:
                raise _visitor_message(err) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            raise _visitor_message(err) from None

    return wrapper


def _load_plot(path: Path | None) -> Image.Image | None:
    """Plots are handed to gradio as images, so the runs root never needs to be served."""
    if path is None:
        return None
    with Image.open(path) as image:
        return image.convert("RGB")


def build_app(config: DemoConfig, handlers: DemoHandlers | None = None) -> gr.Blocks:
    """The `gr.Blocks` app for `config` (queue configured; call `.launch()` on it)."""
    if handlers is None:
        from gradio.utils import get_upload_folder

        # images come from gradio's upload folder (uploads, cached examples) or the examples dir
        handlers = DemoHandlers(config, upload_roots=[Path(get_upload_folder())])
    limits = config.limits

    # uploads older than an hour are deleted every 10 minutes (UploadBudget bounds the folder between)
    with gr.Blocks(title="evomm — evolutionary model merging demo", analytics_enabled=False,
                   delete_cache=(600, 3600)) as app:
        gr.Markdown(
            "# evomm demo\nModels built by **evolutionary model merging**, side by side with the "
            "models they were merged from."
        )
        with gr.Tab("VLM: 画像について質問", id="vlm"):
            _vlm_tab(config, handlers)
        with gr.Tab("Text-to-image: 画像生成", id="t2i"):
            _t2i_tab(config, handlers)
        with gr.Tab("Evolution dashboard", id="dashboard"):
            _dashboard_tab(config, handlers, app)
    app.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    app.evomm_handlers = handlers  # type: ignore[attr-defined]
    return app


def _vlm_tab(config: DemoConfig, handlers: DemoHandlers) -> None:
    limits = config.limits
    refs = handlers.vlm_refs
    if not refs:
        gr.Markdown("**No vision-language model is configured.** Set `EVOMM_DEMO_MERGED` / `EVOMM_DEMO_PARENTS`.")
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(
                type="filepath",
                sources=["upload", "clipboard"],
                label=f"画像 Image (PNG/JPEG/WebP, ≤ {limits.max_upload_bytes // (1024 * 1024)} MB)",
                height=260,
                elem_id="vlm-image",
            )
            examples = example_items(config)
            question = gr.Textbox(
                value=examples[0][1] if examples and examples[0][1] else DEFAULT_QUESTION,
                label=f"質問 Question (≤ {limits.max_prompt_chars} characters)",
                lines=2,
                elem_id="vlm-question",
            )
            with gr.Accordion("生成設定 Generation settings", open=False):
                max_new_tokens = gr.Slider(1, limits.max_new_tokens, value=min(48, limits.max_new_tokens),
                                           step=1, label="Max new tokens")
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
                repetition_penalty = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (sampling)")
            ask = gr.Button("質問する Ask", variant="primary", elem_id="vlm-ask", interactive=bool(refs))
        with gr.Column(scale=2):
            status = gr.Markdown("", elem_id="vlm-status")
            answers = []
            with gr.Row(equal_height=True):
                for i, ref in enumerate(refs):
                    is_merged = i == 0 and config.merged is not None
                    role = "merged" if is_merged else "parent"
                    note = "" if sees_images(ref.path) else " — text only, does not see the image"
                    answers.append(
                        gr.Textbox(
                            label=f"{'merged' if is_merged else 'parent'}: {ref.name}{note}",
                            lines=6,
                            interactive=False,
                            elem_id="vlm-answer-merged" if is_merged else f"vlm-answer-parent-{i}",
                            elem_classes=["answer", f"answer-{role}"],
                        )
                    )
            # examples fill the wide column under the answers (click one: image and question)
            if examples and all(q for _, q in examples):
                gr.Examples(examples=[[str(p), q] for p, q in examples], inputs=[image, question],
                            label="例 Examples (click to use)", examples_per_page=4, elem_id="vlm-examples")
            elif examples:
                gr.Examples(examples=[[str(p)] for p, _ in examples], inputs=[image],
                            label="例 Examples (click to use)", examples_per_page=4, elem_id="vlm-examples")

    image.upload(
        _as_messages(_warn_on_bad_upload(handlers)),
        inputs=[image],
        outputs=[image],
        preprocess=False,
        concurrency_limit=4,
        api_visibility="private",
    )
    ask.click(
        _as_messages(handlers.answer),
        inputs=[image, question, max_new_tokens, temperature, top_p, repetition_penalty, seed],
        outputs=[status, *answers],
        preprocess=False,
        concurrency_id=CONCURRENCY_ID,
        concurrency_limit=limits.concurrency,
        api_name="answer",
    )


def _warn_on_bad_upload(handlers: DemoHandlers):
    def check(payload):
        try:
            handlers.check_upload(payload)
        except DemoInputError as err:
            gr.Warning(str(err))
            return None  # clear the refused image
        return gr.skip()

    return check


def _t2i_tab(config: DemoConfig, handlers: DemoHandlers) -> None:
    limits = config.limits
    refs = handlers.sdxl_refs
    if not refs:
        gr.Markdown(
            f"**No SDXL model is configured**, so text-to-image is off. Start the app with "
            f"`--sdxl DIR` / `--sdxl-parents DIRS` or set `{ENV_SDXL}` (the toy SDXL zoo under "
            f"`assets/sdxl_zoo/` is used when present).",
            elem_id="t2i-missing",
        )
    elif config.sdxl_merged is None:
        gr.Markdown("No merged SDXL model is configured; showing the parents only.", elem_id="t2i-missing")
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(value=DEFAULT_T2I_PROMPT, label=f"プロンプト Prompt (≤ {limits.max_prompt_chars} characters)",
                                lines=2, elem_id="t2i-prompt")
            steps = gr.Slider(1, limits.max_steps, value=min(4, limits.max_steps), step=1, label="Steps")
            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
            guidance = gr.Slider(0.0, limits.max_guidance, value=0.0, step=0.5, label="Guidance scale")
            prompts = sdxl_example_prompts(config)
            if prompts:
                gr.Examples(examples=[[p] for p in prompts], inputs=[prompt], label="例 Examples",
                            elem_id="t2i-examples")
            gr.Markdown("Sampler: Euler with trailing timesteps, the same noise (seed) for every model.")
            go = gr.Button("生成 Generate", variant="primary", elem_id="t2i-generate", interactive=bool(refs))
        with gr.Column(scale=2):
            images = []
            with gr.Row():
                for i, ref in enumerate(refs):
                    is_merged = i == 0 and config.sdxl_merged is not None
                    images.append(
                        gr.Image(
                            label=f"{'merged' if is_merged else 'parent'}: {ref.name}",
                            interactive=False,
                            height=256,
                            elem_id="t2i-image-merged" if is_merged else f"t2i-image-parent-{i}",
                        )
                    )
    if refs:
        go.click(
            _as_messages(handlers.generate_images),
            inputs=[prompt, steps, seed, guidance],
            outputs=images,
            concurrency_id=CONCURRENCY_ID,
            concurrency_limit=limits.concurrency,
            api_name="generate_images",
        )


def _stage_label(stage: str) -> str:
    return "(whole run)" if stage == "." else stage


def _dashboard_tab(config: DemoConfig, handlers: DemoHandlers, app: gr.Blocks) -> None:
    runs = handlers.runs()
    if config.runs_root is None:
        gr.Markdown(f"**No runs root is configured.** Start the app with `--runs-root DIR` or set `{ENV_RUNS_ROOT}`.")
    else:
        gr.Markdown(f"Runs found under the configured runs root: **{len(runs)}**. A run is chosen from this "
                    "list only; paths cannot be typed.")
    with gr.Row():
        choice = gr.Dropdown(choices=runs, value=runs[0] if runs else None, label="Run", scale=3,
                             elem_id="run-select")
        stage = gr.Dropdown(choices=[], value=None, label="Stage", scale=2, elem_id="run-stage")
        refresh = gr.Button("Refresh list", scale=1, elem_id="run-refresh")
    notes = gr.Markdown(elem_id="run-notes")
    with gr.Row():
        # the plots carry their own titles
        fitness = gr.Image(label="Fitness per generation", show_label=False, interactive=False,
                           elem_id="run-fitness", height=340)
        genome = gr.Image(label="Best genome: per-layer parameters (PS) or layer path (DFS)", show_label=False,
                          interactive=False, elem_id="run-genome", height=340)
    dfs_text = gr.Markdown(elem_id="run-dfs")
    with gr.Row():
        with gr.Column():
            table = gr.Dataframe(label="Results (results.json)", interactive=False, elem_id="run-table")
            grid = gr.Image(label="Summary figure (report.png / image grid)", show_label=False,
                            interactive=False, visible=False, elem_id="run-grid")
        with gr.Column():
            recipe = gr.Code(language="yaml", label="best_recipe.yml", interactive=False, elem_id="run-recipe",
                             max_lines=24)
            download = gr.DownloadButton("Download best_recipe.yml", elem_id="run-download", visible=False)
    with gr.Accordion("report.md (click to open)", open=False, elem_id="run-report-accordion"):
        report = gr.Markdown(elem_id="run-report")

    def render(view):
        recipe_file = handlers.recipe_download(view)
        table_value = {"headers": view.table_headers, "data": view.table_rows} if view.table_rows else None
        from_results = view.table_headers[:1] == ["model"]
        table_label = "Held-out results (results.json)" if from_results else "Best fitness per stage (no results.json yet)"
        return (
            "\n".join(f"- {n}" for n in view.notes),
            _load_plot(view.fitness_plot),
            _load_plot(view.genome_plot),
            f"**DFS path** — {view.dfs_summary}" if view.dfs_summary else "",
            gr.update(value=table_value, label=table_label),
            gr.update(value=_load_plot(view.grid_plot), visible=view.grid_plot is not None),
            view.recipe_text,
            gr.update(value=str(recipe_file) if recipe_file else None, visible=recipe_file is not None),
            strip_images(view.report_md),
        )

    shown = [notes, fitness, genome, dfs_text, table, grid, recipe, download, report]

    def show_run(name):
        if not name:
            return (gr.skip(),) * (len(shown) + 1)
        view = handlers.open_run(name)
        stages = gr.update(choices=[(_stage_label(s), s) for s in view.stages], value=view.stage,
                           visible=len(view.stages) > 1)
        return (stages, *render(view))

    def show_stage(name, stage_name):
        if not name or not stage_name:
            return (gr.skip(),) * len(shown)
        return render(handlers.open_run(name, stage_name))

    choice.change(_as_messages(show_run), inputs=[choice], outputs=[stage, *shown], concurrency_limit=4,
                  api_name="open_run")
    stage.input(_as_messages(show_stage), inputs=[choice, stage], outputs=shown, concurrency_limit=4,
                api_name="open_stage")
    app.load(_as_messages(show_run), inputs=[choice], outputs=[stage, *shown], concurrency_limit=4,
             api_visibility="private")
    refresh.click(
        _as_messages(lambda: gr.update(choices=handlers.runs())), outputs=[choice], concurrency_limit=4,
        api_visibility="private",
    )


def strip_images(markdown: str) -> str:
    """Image links of report.md point into the run dir, which the app does not serve."""
    return re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"*(figure: \1 — see the plots above)*", markdown)
