"""Few-step text-to-image from the merged SDXL model and its parents, on the same noise.

Each model is a diffusers `StableDiffusionXLPipeline` directory (its own tokenizers and text
encoders: the Japanese parent reads Japanese, the few-step parent English). Every model gets
a generator seeded with the visitor's seed, so differences come from the weights, not noise.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from PIL import Image

from evomm.demo.config import ModelRef

logger = logging.getLogger(__name__)

#: Small toy images are enlarged (nearest neighbour) so they can be seen in the page.
DISPLAY_MIN_SIDE = 256


class ImageModel:
    """One SDXL pipeline (a diffusers folder, loaded by `evomm.models.sdxl`)."""

    def __init__(self, ref: ModelRef, device: str = "cpu"):
        from evomm.models.sdxl import SamplerSettings, load_pipeline, make_scheduler

        self.ref = ref
        self.device = device
        self.pipe = load_pipeline(ref.path, dtype=torch.float32, device=device)
        # every model samples the same way evaluation does: Euler with trailing timesteps
        self.pipe.scheduler = make_scheduler(self.pipe, SamplerSettings())
        self._lock = threading.Lock()

    def generate(self, prompt: str, steps: int, seed: int, guidance: float) -> Image.Image:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with self._lock, torch.inference_mode():
            result = self.pipe(
                prompt=prompt,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
                output_type="pil",
            )
        return _for_display(result.images[0])


def _for_display(image: Image.Image) -> Image.Image:
    side = min(image.size)
    if side >= DISPLAY_MIN_SIDE:
        return image
    factor = -(-DISPLAY_MIN_SIDE // side)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


class ImageModelCache:
    def __init__(self, device: str = "cpu"):
        self.device = device
        self._models: dict[Path, ImageModel] = {}
        self._lock = threading.Lock()

    def get(self, ref: ModelRef) -> ImageModel:
        with self._lock:
            if ref.path not in self._models:
                logger.info("loading SDXL pipeline %s from %s", ref.name, ref.path)
                self._models[ref.path] = ImageModel(ref, self.device)
            return self._models[ref.path]
