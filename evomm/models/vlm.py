"""Answer questions about images with a LLaVA / LLaVA-NeXT model (transformers).

One wrapper serves the final benchmark run and the evolution loop: it takes either a model
path or a model object that is already in memory (a merge candidate whose weights were set
in place), builds prompts from a chat template or a named template, generates greedily or
with beams in batches, and returns the stripped answers. A LLaVA-NeXT checkpoint runs with
its any-resolution tiling or, as Sakana's EvoVLM-JP evaluation ran it, as a one-crop LLaVA
(`image_mode`, see `IMAGE_MODES`).
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
# EvoVLM-JP; `llava-mistral` is LLaVA-1.6-Mistral's own format. `ja-shisa-vqa` is the same
# text under the name Sakana's evaluation uses (`JA_SHISA_VQA` in SakanaAI/evolutionary-model-
# merge, evomerge/models/prompt_templates.py), which applies it to LLaVA-1.6 as well.
_JA_SHISA_VQA = (
    "[INST] <<SYS>>\nあなたは役立つ、偏見がなく、検閲されていないアシスタントです。"
    "与えられた画像を下に、質問に答えてください。\n<</SYS>>\n\n{input} [/INST]"
)
PROMPT_TEMPLATES: dict[str, str] = {
    "llava-mistral": "[INST] {input} [/INST]",
    "ja-vqa": _JA_SHISA_VQA,
    "ja-shisa-vqa": _JA_SHISA_VQA,
    "ja-vqa-short": "[INST] {input}\n簡潔に日本語で答えてください。 [/INST]",
    "plain": "{input}",
}
CHAT = "chat"  # use the processor's chat template

# How a LLaVA-NeXT checkpoint sees an image. `tiling` (its own class, the default): the
# any-resolution grid of crops plus the base image, with `image_newline` rows.
# `single_crop`: its weights in a `LlavaForConditionalGeneration`, so one crop at the vision
# tower's image size (shortest-edge resize, centre crop) and no `image_newline`, as Sakana's
# EvoVLM-JP evaluation loaded both LLaVA-1.6 and EvoVLM-JP. A plain LLaVA checkpoint has one
# crop only: `single_crop` changes nothing there, `tiling` is an error.
IMAGE_MODES = ("tiling", "single_crop")
_LLAVA_TYPES = ("llava", "llava_next")


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


def check_image_mode(image_mode: str | None, model_type: str | None, where: str = "model") -> None:
    """Raise a ConfigError unless `image_mode` fits a checkpoint of `model_type`."""
    if image_mode is None:
        return
    if image_mode not in IMAGE_MODES:
        raise ConfigError(f"{where}: image_mode must be one of {list(IMAGE_MODES)}, got {image_mode!r}")
    if model_type not in _LLAVA_TYPES:
        raise ConfigError(f"{where}: image_mode applies to LLaVA / LLaVA-NeXT checkpoints, "
                          f"not model_type {model_type!r}")
    if image_mode == "tiling" and model_type != "llava_next":
        raise ConfigError(f"{where}: image_mode 'tiling' needs a LLaVA-NeXT checkpoint "
                          f"(model_type 'llava_next'); this one is {model_type!r}, which sees one crop")


def single_crop_config(config):
    """A LLaVA-NeXT config as a `LlavaConfig`: the same towers and projector, no tiling grid."""
    from transformers import LlavaConfig

    vision = config.vision_config
    strategy = config.vision_feature_select_strategy
    return LlavaConfig(
        vision_config=vision,
        text_config=config.text_config,
        image_token_index=config.image_token_index,
        image_seq_length=(vision.image_size // vision.patch_size) ** 2 + (strategy == "full"),
        projector_hidden_act=config.projector_hidden_act,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=config.vision_feature_layer,
        multimodal_projector_bias=getattr(config, "multimodal_projector_bias", True),
        tie_word_embeddings=getattr(config, "tie_word_embeddings", False),
    )


def single_crop_processor(processor, config):
    """A `LlavaProcessor` for one crop at the vision tower's size (`config`: a LlavaConfig),
    keeping `processor`'s tokenizer, chat template and pixel normalisation."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise EvommError("the processor has no tokenizer")
    vision = config.vision_config
    size = vision.image_size
    kwargs: dict[str, Any] = dict(size={"shortest_edge": size},
                                  crop_size={"height": size, "width": size}, do_center_crop=True)
    source = getattr(processor, "image_processor", None)
    for key in ("image_mean", "image_std", "resample", "rescale_factor", "do_rescale",
                "do_normalize", "do_convert_rgb"):
        value = getattr(source, key, None)
        if value is not None:
            kwargs[key] = value
    # a CLIP tower's CLS token is one more feature than its patches
    extra = 1 if vision.model_type == "clip_vision_model" else getattr(
        processor, "num_additional_image_tokens", 0)
    return LlavaProcessor(
        image_processor=CLIPImageProcessor(**kwargs),
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=extra,
        chat_template=getattr(processor, "chat_template", None),
        image_token=getattr(processor, "image_token", "<image>"),
    )


def single_crop_model(model: torch.nn.Module) -> torch.nn.Module:
    """An in-memory LLaVA-NeXT model's weights (all but `image_newline`) in a new
    `LlavaForConditionalGeneration` (built at full size: meant for small models; checkpoints
    on disk load directly, see `VLMGenerator.from_pretrained(image_mode="single_crop")`)."""
    from transformers import LlavaForConditionalGeneration

    config = single_crop_config(model.config)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("image_newline")}
    param = next(model.parameters())
    single = LlavaForConditionalGeneration(config).to(dtype=param.dtype)
    single.load_state_dict(state, strict=True)
    return single.to(param.device).eval()


def with_image_mode(model: torch.nn.Module, processor, image_mode: str | None,
                    where: str = "model"):
    """(model, processor) as `image_mode` asks, for a model already in memory."""
    model_type = getattr(model.config, "model_type", None)
    check_image_mode(image_mode, model_type, where)
    if image_mode == "single_crop" and model_type == "llava_next":
        model = single_crop_model(model)
        processor = single_crop_processor(processor, model.config)
    return model, processor


def load_single_crop(path: str | Path, dtype: str | torch.dtype = "float32",
                     trust_remote_code: bool = False, config=None):
    """A LLaVA-NeXT checkpoint's weights loaded into `LlavaForConditionalGeneration` (every
    tensor but `image_newline`; anything else missing or left over is an error)."""
    from transformers import AutoConfig, LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    path = str(path)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if config is None:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if getattr(config, "model_type", None) != "llava_next":
        raise ConfigError(f"{path}: single-crop loading needs a LLaVA-NeXT checkpoint, "
                          f"not model_type {getattr(config, 'model_type', None)!r}")

    # the load report would flag `image_newline` as unexpected: expected here, checked below
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = LlavaForConditionalGeneration.from_pretrained(
            path, config=single_crop_config(config), dtype=dtype, use_safetensors=True,
            trust_remote_code=trust_remote_code, output_loading_info=True,
        )
    except RuntimeError as exc:  # size mismatches, failed name conversions
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvommError(f"cannot load {path} as a single-crop LLaVA: {first_line}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not k.endswith("image_newline"))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or [])
    if missing or unexpected or mismatched:
        raise EvommError(
            f"cannot load {path} as a single-crop LLaVA: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, mismatched {mismatched[:3]}"
        )
    return model


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
        image_mode: str | None = None,
        **kwargs,
    ) -> VLMGenerator:
        """Load a model and its processor (safetensors only; no remote code by default).

        image_mode: None (the checkpoint's own class), or for a LLaVA-NeXT checkpoint
            `tiling` (the same) or `single_crop` (see `IMAGE_MODES`).
        """
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if image_mode is not None and image_mode not in IMAGE_MODES:
            check_image_mode(image_mode, None, str(path))
        try:
            config = None
            if image_mode is not None:
                config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
                check_image_mode(image_mode, getattr(config, "model_type", None), str(path))
            single_crop = image_mode == "single_crop" and config.model_type == "llava_next"
            if single_crop:
                model = load_single_crop(str(path), dtype, trust_remote_code, config=config)
            else:
                model = AutoModelForImageTextToText.from_pretrained(
                    str(path), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
                )
            processor = AutoProcessor.from_pretrained(
                str(processor_path or path), trust_remote_code=trust_remote_code
            )
            if single_crop:
                processor = single_crop_processor(processor, model.config)
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
