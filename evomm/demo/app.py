"""Start the demo server from parsed flags (used by `demos/app.py` and the tests)."""

from __future__ import annotations

import argparse
import logging
import sys

import gradio as gr
import torch

from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from evomm.demo.config import DemoConfig, config_from
from evomm.demo.file_guard import ForeignPathGuard
from evomm.demo.ui import CSS, build_app
from evomm.demo.upload_budget import UploadBudget
from evomm.errors import EvommError

logger = logging.getLogger(__name__)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")


def launch_app(config: DemoConfig, host: str | None = None, port: int | None = None,
               block: bool = True) -> gr.Blocks:
    """Build and start the app; with `block=False` return once it is serving."""
    torch.set_num_threads(config.threads)
    app = build_app(config)
    limits = config.limits
    budget = Middleware(UploadBudget, max_request_bytes=limits.max_request_bytes,
                        max_visitor_bytes=limits.max_visitor_bytes, visitor_window_s=limits.visitor_window_s,
                        upload_dir=get_upload_folder(), max_dir_bytes=limits.max_upload_dir_bytes,
                        prune_after_s=limits.prune_uploads_after_s)
    app.launch(
        server_name=host,
        server_port=port,
        max_file_size=config.limits.max_upload_bytes,
        app_kwargs={"middleware": [budget, Middleware(ForeignPathGuard, upload_dir=get_upload_folder())]},
        show_error=False,
        prevent_thread_lock=not block,
        quiet=not block,
        css=CSS,
        theme=gr.themes.Soft(),
        ssr_mode=False,
    )
    return app


def launch(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except EvommError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logger.info(
        "serving merged=%s parents=%s sdxl=%s sdxl_parents=%s runs_root=%s",
        config.merged and config.merged.path,
        [str(p.path) for p in config.parents],
        config.sdxl_merged and config.sdxl_merged.path,
        [str(p.path) for p in config.sdxl_parents],
        config.runs_root,
    )
    launch_app(config, args.host, args.port, block=True)
    return 0
