"""What happens when a visitor presses a button: validation, generation, errors as messages.

These are plain functions over plain values (no gradio objects are needed to call them), so
tests call them directly. Every visitor-caused problem is a `DemoInputError`; the UI layer
(`evomm.demo.ui`) turns it into a `gr.Error` message. Anything else is logged here with its
stack trace and reaches the visitor only as a generic one-line message.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from evomm.demo.chat import GenerationSettings, ModelCache, compare
from evomm.demo.config import DemoConfig, ModelRef
from evomm.demo.limits import DemoInputError, check_float, check_int, check_prompt, open_image_upload
from evomm.demo.paths import DemoPathError
from evomm.demo.runs import RunView, list_runs, load_run
from evomm.demo.text2image import ImageModelCache

logger = logging.getLogger(__name__)

DONE_PREFIX = "done"


class DemoInternalError(Exception):
    """Something failed on our side; the visitor sees only this class's message."""


def upload_path(payload: object) -> str | None:
    """The file path inside an image payload (gradio FileData dict, or a plain path)."""
    if payload is None:
        return None
    if isinstance(payload, dict):
        path = payload.get("path")
        return str(path) if path else None
    if isinstance(payload, (str, Path)):
        return str(payload)
    raise DemoInputError("Unexpected image value; please upload the image again.")


@dataclass
class DemoHandlers:
    """Event handlers over one `DemoConfig`; models are loaded on first use and cached."""

    config: DemoConfig
    upload_roots: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.chat_models = ModelCache(self.config.device, self.config.template)
        self.image_models = ImageModelCache(self.config.device)
        self._download_dir = Path(tempfile.mkdtemp(prefix="evomm-demo-"))
        if self.config.examples_dir is not None:
            self.upload_roots.append(self.config.examples_dir)

    # --- VLM -----------------------------------------------------------------------------
    @property
    def vlm_refs(self) -> list[ModelRef]:
        return ([self.config.merged] if self.config.merged else []) + list(self.config.parents)

    def _image(self, payload: object) -> Image.Image:
        path = upload_path(payload)
        if path is None:
            raise DemoInputError("Please upload an image or pick an example first.")
        resolved = Path(path).resolve()
        if self.upload_roots and not any(resolved.is_relative_to(r.resolve()) for r in self.upload_roots):
            raise DemoPathError("That file was not uploaded through this page.")
        return open_image_upload(resolved, self.config.limits)

    def check_upload(self, payload: object) -> None:
        """Validate an upload as soon as it arrives (raises `DemoInputError`)."""
        if payload is not None:
            self._image(payload)

    def answer(self, payload: object, question: object, max_new_tokens: object, temperature: object,
               top_p: object, repetition_penalty: object, seed: object) -> Iterator[tuple[str, ...]]:
        """Stream (status, merged answer, parent answers...) for one question about one image."""
        limits = self.config.limits
        refs = self.vlm_refs
        if not refs:
            raise DemoInputError("No vision-language model is configured for this demo.")
        question = check_prompt(question, limits, "question")
        settings = GenerationSettings(
            max_new_tokens=check_int(max_new_tokens, "Max new tokens", 1, limits.max_new_tokens),
            temperature=check_float(temperature, "Temperature", 0.0, 2.0),
            top_p=check_float(top_p, "Top-p", 0.01, 1.0),
            repetition_penalty=check_float(repetition_penalty, "Repetition penalty", 1.0, 2.0),
            seed=check_int(seed, "Seed", 0, 2**31 - 1),
        )
        image = self._image(payload)
        start = time.perf_counter()
        answers = [""] * len(refs)
        try:
            for answers in compare(self.chat_models, refs, image, question, settings):
                current = next((i for i in range(len(answers) - 1, -1, -1) if answers[i]), 0)
                yield (f"generating: {refs[current].name} …", *answers)
        except DemoInputError:
            raise
        except Exception as err:
            logger.exception("generation failed")
            raise DemoInternalError("Generation failed on the server; please try again.") from err
        yield (f"{DONE_PREFIX} in {time.perf_counter() - start:.1f} s", *answers)

    # --- text to image ---------------------------------------------------------------------
    @property
    def sdxl_refs(self) -> list[ModelRef]:
        return ([self.config.sdxl_merged] if self.config.sdxl_merged else []) + list(self.config.sdxl_parents)

    def generate_images(self, prompt: object, steps: object, seed: object, guidance: object) -> list[Image.Image]:
        """One image per SDXL model (merged first), same prompt, steps, seed and guidance."""
        limits = self.config.limits
        refs = self.sdxl_refs
        if not refs:
            raise DemoInputError("No SDXL model is configured for this demo (set EVOMM_DEMO_SDXL).")
        prompt = check_prompt(prompt, limits, "prompt")
        steps = check_int(steps, "Steps", 1, limits.max_steps)
        seed = check_int(seed, "Seed", 0, 2**31 - 1)
        guidance = check_float(guidance, "Guidance scale", 0.0, limits.max_guidance)
        try:
            return [self.image_models.get(ref).generate(prompt, steps, seed, guidance) for ref in refs]
        except Exception as err:
            logger.exception("image generation failed")
            raise DemoInternalError("Image generation failed on the server; please try again.") from err

    # --- evolution dashboard --------------------------------------------------------------
    def runs(self) -> list[str]:
        root = self.config.runs_root
        return list_runs(root) if root is not None else []

    def open_run(self, name: object, stage: object = None) -> RunView:
        """Run `name` (one of its stages; default the last) under the runs root, else `DemoPathError`."""
        if self.config.runs_root is None:
            raise DemoInputError("No runs root is configured (set EVOMM_DEMO_RUNS_ROOT).")
        if not isinstance(name, str):
            raise DemoPathError("Please choose a run.")
        if stage is not None and not isinstance(stage, str):
            raise DemoPathError("Please choose a stage.")
        return load_run(self.config.runs_root, name, stage)

    def recipe_download(self, view: RunView) -> Path | None:
        """A copy of the run's best recipe in a directory the web server may serve."""
        if view.recipe_path is None:
            return None
        label = f"{view.name}-{view.stage}" if view.stage != "." else view.name
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:80] or "run"
        target = self._download_dir / safe / "best_recipe.yml"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(view.recipe_path, tmp)
        tmp.replace(target)
        return target
