"""What a public demo accepts from a visitor, and the checks that enforce it.

A Space is reachable by anyone, so every input is bounded before it reaches a model: uploads
must be real images of bounded byte size and pixel count (checked from the header, before any
decoding, so a decompression bomb is refused without being expanded), prompts and generation
settings have upper limits. Every refusal is a `DemoInputError` with a one-line message that
the UI shows to the visitor instead of a stack trace.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from evomm.errors import EvommError


class DemoInputError(EvommError):
    """A visitor's input is outside what the demo accepts (message shown in the UI)."""


#: Formats a visitor may upload. Anything PIL can open but that is not a plain raster
#: photo format (PSD, EPS, TIFF stacks, ...) is refused.
ALLOWED_IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})


class DemoLimits(BaseModel):
    """Upper bounds on everything a visitor controls."""

    max_upload_bytes: int = Field(8 * 1024 * 1024, gt=0, description="largest accepted upload file")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="width x height, read from the header")
    max_prompt_chars: int = Field(300, gt=0, description="question / image prompt length")
    max_new_tokens: int = Field(128, gt=0, description="longest answer a model may generate")
    max_steps: int = Field(50, gt=0, description="most denoising steps for text-to-image")
    max_guidance: float = Field(20.0, ge=0, description="largest classifier-free guidance scale")
    max_request_bytes: int = Field(10 * 1024 * 1024, gt=0, description="all files of one upload request together")
    max_visitor_bytes: int = Field(64 * 1024 * 1024, gt=0, description="one visitor's uploads per window")
    visitor_window_s: float = Field(600.0, gt=0, description="the window of max_visitor_bytes, in seconds")
    max_upload_dir_bytes: int = Field(512 * 1024 * 1024, gt=0, description="gradio's upload folder on disk")
    prune_uploads_after_s: float = Field(600.0, ge=0, description="uploads older than this may be deleted")
    concurrency: int = Field(1, gt=0, description="requests that may run at the same time")
    queue_size: int = Field(16, gt=0, description="requests that may wait in the queue")


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):.1f} MB"


def open_image_upload(path: str | Path, limits: DemoLimits) -> Image.Image:
    """Open an uploaded file as an RGB image, or raise `DemoInputError` saying why not.

    Order matters: byte size first (cheap), then the header (format and dimensions, no pixel
    data read), and only then decoding.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise DemoInputError("The uploaded file could not be read; please upload it again.") from None
    if size > limits.max_upload_bytes:
        raise DemoInputError(
            f"The image file is too large ({_mb(size)}); the limit is {_mb(limits.max_upload_bytes)}."
        )
    with warnings.catch_warnings():
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise DemoInputError(
                f"The image has too many pixels; the limit is {limits.max_image_pixels:,} pixels."
            ) from None
        except UnidentifiedImageError:
            raise DemoInputError(
                "The uploaded file is not an image this demo accepts "
                f"(allowed: {', '.join(sorted(ALLOWED_IMAGE_FORMATS))})."
            ) from None
        except OSError:
            raise DemoInputError("The uploaded file could not be read as an image.") from None
    with image:
        if image.format not in ALLOWED_IMAGE_FORMATS:
            raise DemoInputError(
                f"Image format {image.format or 'unknown'} is not accepted "
                f"(allowed: {', '.join(sorted(ALLOWED_IMAGE_FORMATS))})."
            )
        width, height = image.size
        if width <= 0 or height <= 0:
            raise DemoInputError("The image has no pixels.")
        if width * height > limits.max_image_pixels:
            side = int(math.isqrt(limits.max_image_pixels))
            raise DemoInputError(
                f"The image is too large: {width}x{height} pixels; the limit is "
                f"{limits.max_image_pixels:,} pixels (about {side}x{side})."
            )
        try:
            image.seek(0)  # first frame of an animation
            return image.convert("RGB")
        except (OSError, ValueError, SyntaxError):
            raise DemoInputError("The image file is damaged and could not be decoded.") from None


def check_prompt(text: object, limits: DemoLimits, what: str = "question") -> str:
    """The stripped prompt, or `DemoInputError` when empty or longer than the limit."""
    if not isinstance(text, str):
        raise DemoInputError(f"The {what} must be text.")
    text = text.strip()
    if not text:
        raise DemoInputError(f"Please enter a {what}.")
    if len(text) > limits.max_prompt_chars:
        raise DemoInputError(
            f"The {what} is too long: {len(text)} characters; the limit is {limits.max_prompt_chars}."
        )
    return text


def check_int(value: object, name: str, low: int, high: int) -> int:
    """An integer setting within [low, high] (sliders can be bypassed through the API)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DemoInputError(f"{name} must be a number.") from None
    if not math.isfinite(number) or number != int(number):
        raise DemoInputError(f"{name} must be a whole number.")
    if not low <= number <= high:
        raise DemoInputError(f"{name} must be between {low} and {high} (got {int(number)}).")
    return int(number)


def check_float(value: object, name: str, low: float, high: float) -> float:
    """A float setting within [low, high]."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DemoInputError(f"{name} must be a number.") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise DemoInputError(f"{name} must be between {low:g} and {high:g} (got {number:g}).")
    return number
