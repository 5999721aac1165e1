"""SDXL candidate pipeline: one `StableDiffusionXLPipeline` whose UNet is re-merged per candidate.

The evolutionary search scores hundreds of UNet merges. Rebuilding a pipeline per candidate
would dominate the time, so one pipeline is loaded once — text encoders, tokenizers and VAE
from the source the config names (e.g. the Japanese one) — and each candidate's merged UNet
weights are written into it in place. What does not depend on the UNet is computed once per
prompt set: the text embeddings and the starting noise (one fixed seed per prompt), so every
candidate is compared on exactly the same inputs.

UNet sources may be diffusers pipeline / UNet folders or SDXL single-file checkpoints
(`model.diffusion_model.*`); the adapter maps both onto diffusers names.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from evomm.errors import CheckpointError, ConfigError

SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
}


@dataclass
class SamplerSettings:
    """How images are drawn. The default is SDXL-Lightning's: Euler, 4 trailing steps, no guidance."""

    steps: int = 4
    guidance_scale: float = 0.0
    scheduler: str = "euler"
    timestep_spacing: str = "trailing"
    batch_size: int = 32
    seed: int = 0
    height: int | None = None
    width: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "SamplerSettings":
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"generation: unknown setting(s) {sorted(unknown)} "
                              f"(known: {sorted(cls.__dataclass_fields__)})")
        settings = cls(**data)
        if settings.scheduler not in SCHEDULERS:
            raise ConfigError(f"generation.scheduler: {settings.scheduler!r} is not one of {sorted(SCHEDULERS)}")
        if settings.steps < 1 or settings.batch_size < 1:
            raise ConfigError("generation: steps and batch_size must be at least 1")
        return settings


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
                  config_dir: str | Path | None = None):
    """A StableDiffusionXLPipeline from a local diffusers folder (or a single file + `config_dir`).

    Never contacts a hub: a single-file checkpoint needs `config_dir`, a diffusers folder of the
    same architecture that supplies configs and tokenizers.
    """
    from diffusers import StableDiffusionXLPipeline

    from evomm.io.sources import weight_variant

    path = Path(path)
    if path.is_dir() and (path / "model_index.json").is_file():
        # a repo that ships only `*.fp16.safetensors` loads as that variant
        variant = weight_variant(path / "unet") if (path / "unet").is_dir() else None
        pipe = StableDiffusionXLPipeline.from_pretrained(path, dtype=dtype, local_files_only=True, variant=variant)
    elif path.is_file() and path.suffix == ".safetensors":
        if config_dir is None:
            raise ConfigError(f"{path}: a single-file pipeline source needs config_dir (a diffusers folder for its configs)")
        pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(config_dir), dtype=dtype,
                                                          local_files_only=True)
    else:
        raise CheckpointError(f"{path}: not a diffusers SDXL pipeline folder (no model_index.json) "
                              "nor a .safetensors file")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def make_scheduler(pipe, settings: SamplerSettings):
    """The sampler's scheduler, built from the pipeline's own noise-schedule config."""
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[settings.scheduler])
    return cls.from_config(pipe.scheduler.config, timestep_spacing=settings.timestep_spacing)


# ------------------------------------------------------------------------- UNet materialiser


class _CachedSource:
    """A TensorSource wrapper that keeps every tensor it has read (float32) in memory.

    Source weights are read from disk once per search, not once per candidate.
    """

    def __init__(self, source):
        self._source = source
        self._cache: dict[str, torch.Tensor] = {}

    def __getattr__(self, name: str):
        return getattr(self._source, name)

    def __contains__(self, name: str) -> bool:
        return name in self._source

    def get(self, name: str) -> torch.Tensor:
        tensor = self._cache.get(name)
        if tensor is None:
            tensor = self._source.get(name)
            if tensor.is_floating_point():
                tensor = tensor.float()
            self._cache[name] = tensor
        return tensor


class UNetMaterialiser:
    """Recipe spec (as `evomm merge` reads it) -> merged weights copied into a live UNet.

    Uses the merge planner and the one set of merge methods (`evomm.merge`), so a candidate
    means exactly what `evomm merge` of its recipe writes. Sources are opened once and cached.
    """

    def __init__(self, unet, allow_pickle: bool = False):
        self.unet = unet
        self.allow_pickle = allow_pickle
        self._models: dict[str, Any] = {}
        self._targets = {**dict(unet.named_parameters()), **dict(unet.named_buffers())}

    def _model(self, ref: str):
        from evomm.adapters import adapter_for
        from evomm.io import open_source, resolve_model_path
        from evomm.merge.plan import ModelInput

        if ref not in self._models:
            path = resolve_model_path(ref, None)
            source = _CachedSource(open_source(path, allow_pickle=self.allow_pickle, name=ref))
            self._models[ref] = ModelInput(ref, Path(path), source, adapter_for(source))
        return self._models[ref]

    @torch.no_grad()
    def __call__(self, spec: dict[str, Any]) -> None:
        from evomm.merge.execute import merge_tensor
        from evomm.merge.plan import build_plan
        from evomm.merge.recipe import Recipe

        recipe = Recipe.from_dict(spec, source="candidate")
        plan = build_plan(recipe, {ref: self._model(ref) for ref in recipe.input_models()})
        written = set()
        for task in plan.tasks:
            if task.slot.component != "unet":
                continue  # VAE / text encoders of single-file sources: the pipeline has its own
            target = self._targets.get(task.slot.role)
            if target is None:
                raise CheckpointError(f"merged tensor {task.slot.role} has no place in the pipeline's UNet")
            value = merge_tensor(plan, task) if task.merge else plan.primary_input.source.get(task.name)
            if tuple(value.shape) != tuple(target.shape):
                raise CheckpointError(f"merged {task.slot.role} has shape {tuple(value.shape)}, "
                                      f"the pipeline's UNet expects {tuple(target.shape)}")
            target.copy_(value.to(dtype=target.dtype, device=target.device))
            written.add(task.slot.role)
        missing = [n for n in dict(self.unet.named_parameters()) if n not in written]
        if missing:
            raise CheckpointError(f"the merge left {len(missing)} UNet weights unset (first: {missing[0]})")

    def close(self) -> None:
        for model in self._models.values():
            model.source.close()
        self._models.clear()


# ------------------------------------------------------------------------- candidate pipeline


@dataclass
class PreparedPrompts:
    """Everything about a prompt set that does not depend on the UNet."""

    prompts: list[str]
    embeds: torch.Tensor
    pooled: torch.Tensor
    negative_embeds: torch.Tensor | None
    negative_pooled: torch.Tensor | None
    latents: torch.Tensor  # standard normal, one fixed seed per prompt

    def __len__(self) -> int:
        return len(self.prompts)


class SDXLCandidatePipeline:
    """A pipeline from `pipeline_source` whose UNet weights are set per candidate, in memory."""

    def __init__(self, pipeline_source: str | Path, sampler: SamplerSettings | None = None,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, config_dir: str | Path | None = None,
                 allow_pickle: bool = False):
        self.sampler = sampler or SamplerSettings()
        self.pipe = load_pipeline(pipeline_source, dtype=dtype, device=device, config_dir=config_dir)
        self.pipe.scheduler = make_scheduler(self.pipe, self.sampler)
        self.device = torch.device(device)
        self.materialise = UNetMaterialiser(self.pipe.unet, allow_pickle=allow_pickle)

    # -- UNet -----------------------------------------------------------------------------------

    def set_recipe(self, spec: dict[str, Any]) -> None:
        """Write the merged UNet of recipe `spec` into the pipeline."""
        self.materialise(spec)

    @torch.no_grad()
    def set_unet_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load UNet weights given as a diffusers-named state dict (e.g. a parent's UNet)."""
        self.pipe.unet.load_state_dict(state, strict=True)

    # -- generation -----------------------------------------------------------------------------

    @property
    def do_guidance(self) -> bool:
        return self.sampler.guidance_scale > 1.0

    def _latent_shape(self) -> tuple[int, int, int]:
        scale = self.pipe.vae_scale_factor
        size = self.pipe.unet.config.sample_size
        h = (self.sampler.height or size * scale) // scale
        w = (self.sampler.width or size * scale) // scale
        return (self.pipe.unet.config.in_channels, h, w)

    @torch.no_grad()
    def prepare(self, prompts: list[str], seed: int | None = None) -> PreparedPrompts:
        """Encode `prompts` once and draw prompt i's noise from seed `seed + i`."""
        if not prompts:
            raise ConfigError("the prompt set is empty")
        seed = self.sampler.seed if seed is None else seed
        embeds, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompts, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=self.do_guidance)
        shape = self._latent_shape()
        latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i))
                               for i in range(len(prompts))])
        return PreparedPrompts(list(prompts), embeds, pooled, neg if self.do_guidance else None,
                               neg_pooled if self.do_guidance else None, latents)

    def _batches(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.sampler.batch_size):
            yield slice(start, min(start + self.sampler.batch_size, n))

    @torch.no_grad()
    def generate(self, prepared: PreparedPrompts) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] for the prepared prompts, with the current UNet."""
        out = []
        dtype = self.pipe.unet.dtype
        for part in self._batches(len(prepared)):
            kwargs = {}
            if self.do_guidance:
                kwargs = dict(negative_prompt_embeds=prepared.negative_embeds[part],
                              negative_pooled_prompt_embeds=prepared.negative_pooled[part])
            start = part.start
            generators = [torch.Generator().manual_seed(self.sampler.seed + 10_000_019 + start + i)
                          for i in range(part.stop - start)]  # only stochastic samplers use them
            result = self.pipe(
                prompt_embeds=prepared.embeds[part], pooled_prompt_embeds=prepared.pooled[part],
                latents=prepared.latents[part].to(self.device, dtype), num_inference_steps=self.sampler.steps,
                guidance_scale=self.sampler.guidance_scale, generator=generators, output_type="pt", **kwargs)
            out.append(result.images.float().cpu().clamp(0, 1))
        return torch.cat(out)

    # -- saving ---------------------------------------------------------------------------------

    def save(self, out_dir: str | Path, overwrite: bool = False, dtype: torch.dtype | None = None) -> Path:
        """Write the whole pipeline (current UNet) as a diffusers folder, atomically."""
        return save_pipeline(self.pipe, out_dir, overwrite=overwrite, dtype=dtype)

    def close(self) -> None:
        self.materialise.close()


def save_pipeline(pipe, out_dir: str | Path, overwrite: bool = False, dtype: torch.dtype | None = None) -> Path:
    """`pipe.save_pretrained` into a temporary folder next to `out_dir`, then rename."""
    import copy

    from evomm.errors import OutputExistsError

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out_dir} exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        to_save = copy.deepcopy(pipe).to(dtype=dtype) if dtype is not None else pipe
        to_save.save_pretrained(tmp, safe_serialization=True)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def image_grid(images: torch.Tensor, rows: int, cols: int, scale: int = 3, pad: int = 2):
    """A PIL grid of (rows*cols, 3, H, W) images in [0, 1], row-major, upscaled by `scale`."""
    from PIL import Image

    n, _, h, w = images.shape
    if n != rows * cols:
        raise ValueError(f"{n} images do not fill a {rows}x{cols} grid")
    hh, ww = h * scale, w * scale
    grid = Image.new("RGB", (cols * (ww + pad) + pad, rows * (hh + pad) + pad), (255, 255, 255))
    arr = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for k in range(n):
        r, c = divmod(k, cols)
        tile = Image.fromarray(arr[k]).resize((ww, hh), Image.NEAREST)
        grid.paste(tile, (pad + c * (ww + pad), pad + r * (hh + pad)))
    return grid
