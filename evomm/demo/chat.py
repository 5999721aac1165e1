"""Answering a question about an image with the merged VLM and its parents, streamed.

A parent may be a text-only language model (the Japanese LM of EvoVLM-JP): it answers the
question without seeing the image, which is exactly the comparison the demo wants to show.
Models load lazily on first use and stay cached; all generation goes through
`TextIteratorStreamer` so answers appear token by token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from evomm.demo.config import ModelRef
from evomm.errors import CheckpointError
from evomm.models.vlm import CHAT, PROMPT_TEMPLATES, format_question, is_question_template

logger = logging.getLogger(__name__)

#: Seconds to wait for the next streamed token before giving up (a stuck generation).
STREAM_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings shown in the UI's accordion (already validated against the limits)."""

    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0


def _model_type(path: Path) -> str:
    import json

    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json; is it a Hugging Face model directory?")
    return str(json.loads(config_file.read_text(encoding="utf-8")).get("model_type", ""))


VLM_MODEL_TYPES = frozenset({"llava", "llava_next"})


def sees_images(path: Path) -> bool:
    """Whether the model at `path` is a VLM (reads only its config)."""
    return _model_type(path) in VLM_MODEL_TYPES


class ChatModel:
    """One model of the comparison: a LLaVA-style VLM or a text-only causal LM."""

    def __init__(self, ref: ModelRef, device: str = "cpu", template: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import evomm.models.dfs  # noqa: F401  (registers the evomm_dfs architecture of saved DFS merges)
        from evomm.models.vlm import VLMGenerator

        self.ref = ref
        self.device = device
        self.sees_images = sees_images(ref.path)
        self.question_template = template if is_question_template(template) else None
        if self.question_template:
            template = None
        if self.sees_images:
            # the same loader and prompt templates as evaluation, so answers match the scores
            self._vlm = VLMGenerator.from_pretrained(ref.path, template=template, device=device)
            self.model, self.processor = self._vlm.model, self._vlm.processor
            self.tokenizer = self.processor.tokenizer
        else:
            common = dict(local_files_only=True, trust_remote_code=False)
            self._vlm = None
            self.processor = None
            self.template = PROMPT_TEMPLATES.get(template, template) if template else None
            self.tokenizer = AutoTokenizer.from_pretrained(ref.path, **common)
            self.model = AutoModelForCausalLM.from_pretrained(
                ref.path, use_safetensors=True, dtype=torch.float32, **common
            )
            self.model.to(device).eval()
        self._lock = threading.Lock()  # one generation per model at a time

    def prompt(self, question: str) -> str:
        """The model's input text, built like evaluation builds it (`evomm.models.vlm` / the zoo)."""
        if self.question_template:
            image_token = getattr(self.processor, "image_token", "<image>") if self.sees_images else None
            return format_question(self.question_template, question, image_token)
        if self._vlm is not None:
            return self._vlm.build_prompt(question)
        # a text-only parent: the same template, without the image placeholder
        if self.template not in (None, CHAT):
            return self.template.format(input=question)
        if getattr(self.tokenizer, "chat_template", None):
            for content in ([{"type": "text", "text": question}], question):
                try:
                    return self.tokenizer.apply_chat_template(
                        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
                    )
                except Exception:  # templates differ in the content shape they accept
                    continue
        return PROMPT_TEMPLATES["llava-mistral"].format(input=question)  # what a VLM without one gets

    def _inputs(self, image: Image.Image | None, question: str) -> dict:
        text = self.prompt(question)
        if self.sees_images:
            if image is None:
                raise ValueError("a VLM needs an image")
            inputs = self.processor(images=image, text=text, return_tensors="pt")
        else:
            inputs = self.tokenizer(text, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        return {
            k: v.to(self.device, dtype) if torch.is_floating_point(v) else v.to(self.device) for k, v in inputs.items()
        }

    def stream(self, image: Image.Image | None, question: str, settings: GenerationSettings) -> Iterator[str]:
        """Yield the answer so far, growing token by token."""
        from transformers import TextIteratorStreamer

        inputs = self._inputs(image, question)
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=STREAM_TIMEOUT_S
        )
        sampling = settings.temperature > 0
        kwargs = dict(
            **inputs,
            streamer=streamer,
            max_new_tokens=settings.max_new_tokens,
            do_sample=sampling,
            repetition_penalty=settings.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id,
        )
        if sampling:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    if sampling:
                        torch.manual_seed(settings.seed)
                    self.model.generate(**kwargs)
            except BaseException as err:  # surfaced in the caller's thread below
                failure.append(err)
                streamer.end()

        with self._lock:
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            text = ""
            for piece in streamer:
                text += piece
                yield text
            worker.join()
        if failure:
            raise failure[0]


class ModelCache:
    """Loads each model once (models are shared by all visitors; loading is slow)."""

    def __init__(self, device: str = "cpu", template: str | None = None):
        self.device = device
        self.template = template
        self._models: dict[Path, ChatModel] = {}
        self._lock = threading.Lock()

    def get(self, ref: ModelRef) -> ChatModel:
        with self._lock:
            if ref.path not in self._models:
                logger.info("loading %s from %s", ref.name, ref.path)
                self._models[ref.path] = ChatModel(ref, self.device, self.template)
            return self._models[ref.path]


def compare(
    cache: ModelCache,
    refs: list[ModelRef],
    image: Image.Image,
    question: str,
    settings: GenerationSettings,
) -> Iterator[list[str]]:
    """Answers of all `refs`, one after another, as a list growing while each streams."""
    answers = [""] * len(refs)
    for i, ref in enumerate(refs):
        model = cache.get(ref)
        for partial in model.stream(image if model.sees_images else None, question, settings):
            answers[i] = partial
            yield list(answers)
        if not answers[i].strip():
            answers[i] = "(no answer: the model produced only special tokens)"
            yield list(answers)
