"""Image-prompt agreement for generated images: CLIPScore with open_clip models.

score = 100 * max(cos(image embedding, text embedding), 0), per pair, as torchmetrics
defines CLIPScore. The model is any open_clip model: a built-in or registered config name
plus a weights file (safetensors unless `allow_pickle=True`) or a pretrained tag, an
`hf-hub:org/repo` id, or a `local-dir:` folder.

Japanese prompts: the English CLIP text towers read Japanese poorly. Either use a
multilingual text tower (e.g. `xlm-roberta-base-ViT-B-32` / `xlm-roberta-large-ViT-H-14`
with their LAION weights) and score the Japanese prompt itself, or pass `glosses`, an
English rendering of each prompt, which is scored instead.

Images come as PIL images (`score`, the model's own preprocessing) or as a (N, 3, H, W)
tensor in [0, 1] straight from a decoder (`score_tensors`: resize + normalise on tensors).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evomm.errors import EvommError, MetricError, PickleRefusedError

logger = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _is_japanese(text: str) -> bool:
    from evomm.metrics.language import script_counts

    counts = script_counts(text)
    return counts.kana + counts.kanji > 0


class ClipScorer:
    """A loaded open_clip model scoring (image, text) pairs in batches."""

    def __init__(
        self,
        model_name: str,
        pretrained: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        precision: str = "fp32",
        allow_pickle: bool = False,
    ) -> None:
        import open_clip

        if pretrained is not None and Path(str(pretrained)).suffix in _PICKLE_SUFFIXES:
            if not allow_pickle:
                raise PickleRefusedError(
                    f"{pretrained}: pickled weights; convert to safetensors or pass "
                    "allow_pickle=True (loaded with torch.load(weights_only=True))"
                )
        if pretrained is not None and Path(str(pretrained)).suffix == ".safetensors":
            if not Path(str(pretrained)).is_file():
                raise EvommError(f"{pretrained}: CLIP weights file not found")
        self.device = torch.device(device)
        self.batch_size = batch_size
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name,
                pretrained=str(pretrained) if pretrained is not None else None,
                device=self.device,
                precision=precision,
                weights_only=True,
            )
        except RuntimeError as exc:
            raise EvommError(f"cannot build open_clip model {model_name!r}: {exc}") from exc
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.multilingual = "roberta" in model_name.lower() or "mt5" in model_name.lower() \
            or "multilingual" in model_name.lower()
        self._warned = False
        # prompts repeat every generation of an evolution run: embed each text once
        self._text_cache: dict[str, torch.Tensor] = {}
        size = getattr(self.model.visual, "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        norm = [t for t in getattr(preprocess, "transforms", []) if type(t).__name__ == "Normalize"]
        mean = norm[0].mean if norm else (0.48145466, 0.4578275, 0.40821073)
        std = norm[0].std if norm else (0.26862954, 0.26130258, 0.27577711)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings, computed `batch_size` images at a time."""
        feats = []
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im.convert("RGB"))
                                 for im in images[start:start + self.batch_size]])
            out = self.model.encode_image(batch.to(self.device, dtype))
            feats.append(torch.nn.functional.normalize(out.float(), dim=-1))
        return torch.cat(feats)

    def clear_cache(self) -> None:
        """Forget cached text embeddings (needed only if the scoring model's weights change)."""
        self._text_cache.clear()

    @torch.inference_mode()
    def tensor_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of an (N, 3, H, W) batch in [0, 1] (e.g. decoded SDXL latents): bicubic
        resize to the model's input size when needed, then the model's normalisation."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise MetricError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        dtype = next(self.model.parameters()).dtype
        feats = []
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size].float().cpu()
            if tuple(x.shape[-2:]) != self.image_size:
                x = torch.nn.functional.interpolate(
                    x, size=self.image_size, mode="bicubic", align_corners=False
                ).clamp(0, 1)
            x = (x - self._mean) / self._std
            out = self.model.encode_image(x.to(self.device, dtype))
            feats.append(torch.nn.functional.normalize(out.float(), dim=-1))
        return torch.cat(feats)

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, in batches; each distinct text is embedded once."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            out = self.model.encode_text(self.tokenizer(chunk).to(self.device))
            for text, feat in zip(chunk, torch.nn.functional.normalize(out.float(), dim=-1)):
                self._text_cache[text] = feat
        return torch.stack([self._text_cache[t] for t in texts])

    def score(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        glosses: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Per-pair CLIPScore, 100 * max(cos, 0). `glosses` (English) replace the prompts."""
        images, prompts = list(images), list(prompts)
        if len(images) != len(prompts):
            raise MetricError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            raise MetricError("clip score: no pairs to score")
        texts = prompts
        if glosses is not None:
            glosses = list(glosses)
            if len(glosses) != len(prompts):
                raise MetricError(f"{len(prompts)} prompts but {len(glosses)} glosses")
            texts = glosses
        elif not self.multilingual and not self._warned and any(map(_is_japanese, prompts)):
            logger.warning("scoring Japanese prompts with an English CLIP text tower; use a "
                           "multilingual model or pass English glosses")
            self._warned = True
        cos = (self.image_features(images) * self.text_features(texts)).sum(dim=-1)
        return (100 * cos.clamp(min=0)).cpu().numpy().astype(np.float64)

    def score_tensors(
        self,
        images: torch.Tensor,
        prompts: Sequence[str],
        glosses: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Per-pair CLIPScore for an (N, 3, H, W) tensor batch in [0, 1]."""
        prompts = list(prompts)
        if len(images) != len(prompts):
            raise MetricError(f"{len(images)} images but {len(prompts)} prompts")
        if not prompts:
            raise MetricError("clip score: no pairs to score")
        texts = prompts if glosses is None else list(glosses)
        if len(texts) != len(prompts):
            raise MetricError(f"{len(prompts)} prompts but {len(texts)} glosses")
        cos = (self.tensor_image_features(images) * self.text_features(texts)).sum(dim=-1)
        return (100 * cos.clamp(min=0)).cpu().numpy().astype(np.float64)

    def __call__(self, images, prompts, glosses=None) -> float:
        """Mean CLIPScore over the pairs."""
        return float(np.mean(self.score(images, prompts, glosses)))


def clip_score(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    model_name: str,
    pretrained: str | Path | None = None,
    glosses: Sequence[str] | None = None,
    device: str = "cpu",
    batch_size: int = 32,
) -> float:
    """One-off mean CLIPScore (builds the model; keep a `ClipScorer` for repeated use)."""
    scorer = ClipScorer(model_name, pretrained=pretrained, device=device, batch_size=batch_size)
    return scorer(images, prompts, glosses)
