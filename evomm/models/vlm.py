"""Answer questions about images with a LLaVA / LLaVA-NeXT model (transformers).

One wrapper serves the final benchmark run and the evolution loop: it takes either a model
path or a model object that is already in memory (a merge candidate whose weights were set
in place), builds prompts from a chat template or a named template, generates greedily or
with beams in batches, and returns the stripped answers.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from evomm.errors import ConfigError, EvommError

# Named prompt templates; `{input}` receives "<image>\n<question>". The Japanese VQA template
# follows the Mistral [INST] format with a Japanese system prompt ("you are a helpful,
# unbiased assistant; answer the question based on the given image"), as used for
# EvoVLM-JP; `llava-mistral` is LLaVA-1.6-Mistral's own format.
PROMPT_TEMPLATES: dict[str, str] = {
    "llava-mistral": "[INST] {input} [/INST]",
    "ja-vqa": (
        "[INST] <<SYS>>\nあなたは役立つ、偏見がなく、検閲されていないアシスタントです。"
        "与えられた画像を下に、質問に答えてください。\n<</SYS>>\n\n{input} [/INST]"
    ),
    "ja-vqa-short": "[INST] {input}\n簡潔に日本語で答えてください。 [/INST]",
    "plain": "{input}",
}
CHAT = "chat"  # use the processor's chat template


@dataclass
class GenerationSettings:
    """Decoding settings (greedy by default: a deterministic fitness)."""

    max_new_tokens: int = 128
    num_beams: int = 1
    batch_size: int = 8
    repetition_penalty: float | None = None
    length_penalty: float | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": False,
        }
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.length_penalty is not None and self.num_beams > 1:
            kwargs["length_penalty"] = self.length_penalty
        return kwargs


def format_question(template: str, question: str, image_token: str | None) -> str:
    """Fill a question template (`{image}` / `{context}` and `{question}`, e.g. the toy zoo's
    `USER: {image} {question} ASSISTANT:`): the image token for a VLM, nothing for a text-only
    model, then runs of spaces squeezed to one (an empty field leaves two; models are trained
    with one)."""
    token = image_token or ""
    return re.sub(r" {2,}", " ", template.format(context=token, image=token, question=question)).strip()


def is_question_template(template: str | None) -> bool:
    return bool(template) and "{question}" in template


def _resolve_template(template: str | None, processor) -> str:
    if template is None:
        return CHAT if getattr(processor, "chat_template", None) else PROMPT_TEMPLATES["llava-mistral"]
    if template == CHAT:
        if not getattr(processor, "chat_template", None):
            raise ConfigError("template 'chat' asked for, but the processor has no chat template")
        return CHAT
    if template in PROMPT_TEMPLATES:
        return PROMPT_TEMPLATES[template]
    if "{input}" in template or is_question_template(template):
        return template
    raise ConfigError(
        f"unknown prompt template {template!r}: use 'chat', one of {sorted(PROMPT_TEMPLATES)}, "
        "or a string containing {input} (or {image} and {question})"
    )


class VLMGenerator:
    """Batched answer generation for LLaVA-style models.

    model: a `LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` (or any
        image-text-to-text model with the same processor interface). Swap `self.model` (or
        call `with_model`) to score another candidate with the same processor.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor,
        template: str | None = None,
        generation: GenerationSettings | dict | None = None,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.template = _resolve_template(template, processor)
        if isinstance(generation, dict):
            generation = GenerationSettings(**generation)
        self.generation = generation or GenerationSettings()
        if device is not None:
            self.model.to(device)
        self.progress = progress
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:
            raise EvommError("the processor has no tokenizer")
        # batched generation with a decoder-only model needs left padding
        tokenizer.padding_side = "left"
        self.image_token = getattr(processor, "image_token", "<image>")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        template: str | None = None,
        generation: GenerationSettings | dict | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        processor_path: str | Path | None = None,
        trust_remote_code: bool = False,
        **kwargs,
    ) -> VLMGenerator:
        """Load a model and its processor (safetensors only; no remote code by default)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                str(path), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
            )
            processor = AutoProcessor.from_pretrained(
                str(processor_path or path), trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EvommError(f"cannot load VLM from {path}: {first_line}") from exc
        return cls(model, processor, template=template, generation=generation, device=device,
                   **kwargs)

    def with_model(self, model: torch.nn.Module) -> "VLMGenerator":
        """The same processor, template and settings around another (in-memory) model."""
        clone = copy.copy(self)  # keeps the class: a subclass's prompt layout survives
        clone.model = model.eval()
        return clone

    # -- prompts ---------------------------------------------------------------------------
    def build_prompt(self, question: str) -> str:
        if self.template == CHAT:
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                      tokenize=False)
        if is_question_template(self.template):
            return format_question(self.template, question, self.image_token)
        return self.template.format(input=f"{self.image_token}\n{question}")

    # -- generation ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def generate(
        self, questions: Sequence[str], images: Sequence[Image.Image]
    ) -> list[str]:
        """One stripped answer per (question, image)."""
        if isinstance(questions, str):
            questions, images = [questions], [images]
        questions, images = list(questions), list(images)
        if len(questions) != len(images):
            raise EvommError(f"{len(questions)} questions but {len(images)} images")
        settings = self.generation
        batches = range(0, len(questions), max(1, settings.batch_size))
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="generating", unit="batch")
        answers: list[str] = []
        for start in batches:
            stop = start + settings.batch_size
            answers.extend(self._generate_batch(questions[start:stop], images[start:stop]))
        return answers

    __call__ = generate

    def _generate_batch(self, questions: list[str], images: list[Image.Image]) -> list[str]:
        prompts = [self.build_prompt(q) for q in questions]
        images = [im.convert("RGB") if im.mode != "RGB" else im for im in images]
        inputs = self.processor(text=prompts, images=images, padding=True, return_tensors="pt")
        device, dtype = self.device, self.dtype
        inputs = {
            k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device))
            for k, v in inputs.items()
        }
        tokenizer = self.processor.tokenizer
        output = self.model.generate(
            **inputs,
            **self.generation.generate_kwargs(),
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(
            new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return [text.strip() for text in texts]

    def describe(self) -> dict[str, Any]:
        return {"template": self.template, "generation": asdict(self.generation)}
