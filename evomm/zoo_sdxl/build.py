"""Build the toy SDXL zoo: base, Japanese fine-tune, 4-step distillation, open_clip scorer.

Output layout (each pipeline a diffusers `StableDiffusionXLPipeline` directory):

    base/      English tokenizer + text encoders, UNet trained for ~25 guided steps
    japanese/  Japanese tokenizer + new text encoders, UNet fine-tuned from base
    fewstep/   English encoders, UNet guidance-distilled from base for 4 trailing Euler steps, guidance 0
    clip/      open_clip model (`local-dir:` layout) that scores images against English text
    prompts.json   fitness / held-out Japanese prompts with English glosses
    MANIFEST.json  recipe, measurements and sha256 of every file

Everything is written to a temporary folder next to the target and renamed at the end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import data, models, train

FEWSTEP_TIMESTEPS = [999, 749, 499, 249]  # EulerDiscreteScheduler, 4 steps, trailing spacing


@dataclass(frozen=True)
class Recipe:
    """Step counts of every stage (step counts, not time limits, keep builds reproducible)."""

    train_images: int = 3600
    vae_steps: int = 800
    vae_batch: int = 16
    base_steps: int = 1600
    japanese_steps: int = 700
    teacher_guidance: float = 3.0
    distill_steps: int = 400
    clip_steps: int = 300
    batch: int = 64


FULL_RECIPE = Recipe()
SMALL_RECIPE = Recipe(train_images=72, vae_steps=4, base_steps=4, japanese_steps=4, distill_steps=4,
                      clip_steps=3, batch=8, vae_batch=8)


def _text_reading(name: str) -> bool:
    """UNet parameters that read text embeddings: cross-attention K/V and the pooled-text embedding."""
    return ".attn2.to_k." in name or ".attn2.to_v." in name or name.startswith("add_embedding.")


def _rates(text_reading: float, other: float):
    """Learning-rate multipliers: each specialist moves mostly its own layers (text vs the rest)."""
    return lambda name: text_reading if _text_reading(name) else other


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_pipeline(pipe, path: Path) -> None:
    half = copy.deepcopy(pipe).to(dtype=torch.float16)
    half.save_pretrained(path, safe_serialization=True)


def _save_open_clip(model, sizes: models.ZooSizes, path: Path) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    config = {"model_cfg": models.open_clip_config(sizes), "preprocess_cfg": models.CLIP_PREPROCESS}
    (path / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))


@torch.no_grad()
def _generated_accuracy(pipe, prompts: list[data.Prompt], clip_model, clip_tok, steps: int,
                        guidance: float, seed: int) -> float:
    """Share of generated images that the scorer assigns to the prompt's class."""
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    out = pipe([p.text for p in prompts], num_inference_steps=steps, guidance_scale=guidance,
               generator=gens, output_type="pt").images
    labels = torch.tensor([p.label for p in prompts])
    return train.clip_accuracy(clip_model, clip_tok, out * 2 - 1, labels)


class _StageCache:
    """Trained stages saved as safetensors, so an interrupted build resumes after its last stage.

    Keyed by seed, mode and recipe: a cache never feeds a build with other settings.
    """

    def __init__(self, root: Path | None, key: str):
        self.root = root / key if root is not None else None
        self.loaded: list[str] = []  # stages taken from the cache (their times in the manifest are load times)

    def load(self, stage: str, module: torch.nn.Module) -> bool:
        from safetensors.torch import load_file

        path = self.root / f"{stage}.safetensors" if self.root else None
        if path is None or not path.is_file():
            return False
        module.load_state_dict(load_file(str(path)))
        self.loaded.append(stage)
        print(f"[zoo] {stage}: loaded from cache {path}", flush=True)
        return True

    def save(self, stage: str, module: torch.nn.Module) -> None:
        from safetensors.torch import save_file

        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{stage}.tmp"
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp))
        tmp.rename(self.root / f"{stage}.safetensors")


def build_zoo(out_dir: str | Path, seed: int = 0, small: bool = False, threads: int = 1,
              force: bool = False, cache_dir: str | Path | None = None) -> dict:
    """Train and write the zoo to `out_dir`; returns the manifest.

    `cache_dir` keeps each trained stage so that a killed build continues where it stopped.
    """
    import open_clip

    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        from evomm.errors import OutputExistsError

        raise OutputExistsError(f"{out_dir} exists and is not empty (pass force=True / --force)")
    sizes, recipe = (models.SMALL, SMALL_RECIPE) if small else (models.FULL, FULL_RECIPE)
    started, timings, checks = time.time(), {}, {}
    key = hashlib.sha256(json.dumps([seed, small, asdict(recipe), asdict(sizes)]).encode()).hexdigest()[:12]
    cache = _StageCache(Path(cache_dir) if cache_dir else None, key)

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 1)
        print(f"[zoo] {name}: {timings[name]} s", flush=True)

    images, labels = data.make_images(recipe.train_images, seed=seed)
    t0 = time.time()
    vae = models.build_vae(sizes, seed)
    if not cache.load("vae", vae):
        train.train_vae(vae, images, recipe.vae_steps, batch=recipe.vae_batch, seed=seed)
        cache.save("vae", vae)
    scaling = train.latent_scaling(vae, images)
    vae.register_to_config(scaling_factor=scaling)
    checks["vae_psnr_db"] = round(train.vae_psnr(vae, images[:256]), 2)
    latents = train.encode_latents(vae, images, scaling)
    lap("vae", t0)

    en_corpus = [data.english_caption(lab, t) for lab in range(data.NUM_CLASSES)
                 for t in range(len(data.EN_TEMPLATES))]
    ja_corpus = [data.japanese_caption(lab, t) for lab in range(data.NUM_CLASSES)
                 for t in range(len(data.JA_TEMPLATES))]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        # tokenizers are saved and reloaded at once: the pipeline must use the exact numbering it ships
        from transformers import CLIPTokenizer

        models.build_tokenizer(en_corpus).save_pretrained(tmp / "tok_en")
        models.build_tokenizer(ja_corpus, data.JA_MORPHEMES).save_pretrained(tmp / "tok_ja")
        tok_en = CLIPTokenizer.from_pretrained(tmp / "tok_en")
        tok_ja = CLIPTokenizer.from_pretrained(tmp / "tok_ja")
        te_en = models.build_text_encoders(tok_en, sizes, seed + 1)
        te_ja = models.build_text_encoders(tok_ja, sizes, seed + 2)

        # --- base: English captions, classifier-free guidance dropout
        t0 = time.time()
        unet = models.build_unet(sizes, seed)
        base = models.assemble_pipeline(vae, *te_en, tok_en, unet)
        en_emb, en_pool = train.caption_embeddings(base, en_corpus)
        n_en = len(data.EN_TEMPLATES)

        def en_caps(idx, gen):
            return labels[idx] * n_en + torch.randint(n_en, (len(idx),), generator=gen)

        if not cache.load("base", unet):
            train.train_denoiser(unet, latents, en_caps, en_emb, en_pool, recipe.base_steps,
                                 batch=recipe.batch, seed=seed + 10, desc="base")
            cache.save("base", unet)
        _save_pipeline(base, tmp / "base")
        lap("base", t0)

        # --- japanese: new tokenizer + encoders; the text-reading layers learn fastest
        t0 = time.time()
        ja_unet = copy.deepcopy(unet)
        japanese = models.assemble_pipeline(vae, *te_ja, tok_ja, ja_unet)
        ja_emb, ja_pool = train.caption_embeddings(japanese, ja_corpus)
        n_ja = len(data.JA_TEMPLATES)

        def ja_caps(idx, gen):
            return labels[idx] * n_ja + torch.randint(n_ja, (len(idx),), generator=gen)

        if not cache.load("japanese", ja_unet):
            train.train_denoiser(ja_unet, latents, ja_caps, ja_emb, ja_pool, recipe.japanese_steps,
                                 batch=recipe.batch, seed=seed + 20, desc="japanese",
                                 lr_multipliers=_rates(1.0, 0.2))
            cache.save("japanese", ja_unet)
        _save_pipeline(japanese, tmp / "japanese")
        lap("japanese", t0)

        # --- few-step: guidance distillation at the 4 trailing timesteps. The base at 4 steps
        # draws the asked class about half the time without guidance and ~90% with guidance 3;
        # the student learns the guided prediction so that it needs neither guidance nor more steps.
        t0 = time.time()
        student = copy.deepcopy(unet)
        if not cache.load("fewstep", student):
            train.train_denoiser(student, latents, en_caps, en_emb, en_pool, recipe.distill_steps,
                                 batch=recipe.batch, seed=seed + 32, cfg_dropout=0.0,
                                 timesteps=FEWSTEP_TIMESTEPS, desc="distill",
                                 lr_multipliers=_rates(0.2, 1.0),
                                 target=train.guided_teacher(copy.deepcopy(unet), recipe.teacher_guidance))
            cache.save("fewstep", student)
        fewstep = models.assemble_pipeline(vae, *te_en, tok_en, student, timestep_spacing="trailing")
        _save_pipeline(fewstep, tmp / "fewstep")
        lap("fewstep", t0)

        # --- scorer
        t0 = time.time()
        clip_model = models.build_open_clip(sizes, seed + 40)
        clip_tok = open_clip.tokenizer.SimpleTokenizer(context_length=models.CONTEXT_LENGTH)
        if not cache.load("clip", clip_model):
            train.train_open_clip(clip_model, clip_tok, recipe.clip_steps, seed=seed + 40)
            cache.save("clip", clip_model)
        test_images, test_labels = data.make_images(360, seed=seed + 999)
        checks["clip_caption_accuracy"] = round(train.clip_accuracy(clip_model, clip_tok, test_images, test_labels), 3)
        _save_open_clip(clip_model, sizes, tmp / "clip")
        lap("clip", t0)

        # --- checks: does each model draw what it is asked, in its intended regime?
        t0 = time.time()
        en = data.english_prompts((0,), repeats=3)
        ja = data.japanese_prompts(data.JA_HELDOUT_TEMPLATES, repeats=2)
        acc = lambda pipe, prompts, steps, g: round(_generated_accuracy(pipe, prompts, clip_model, clip_tok, steps, g, seed + 7), 3)  # noqa: E731
        checks["base_en_25steps_cfg5_accuracy"] = acc(base, en, 25, 5.0)
        checks["base_en_4steps_accuracy"] = acc(_trailing(base), en, 4, 0.0)
        checks["fewstep_en_4steps_accuracy"] = acc(fewstep, en, 4, 0.0)
        checks["japanese_ja_25steps_cfg5_accuracy"] = acc(japanese, ja, 25, 5.0)
        checks["japanese_ja_4steps_accuracy"] = acc(_trailing(japanese), ja, 4, 0.0)
        lap("checks", t0)

        (tmp / "prompts.json").write_text(json.dumps(data.prompt_sets(), indent=1, ensure_ascii=False))
        shutil.rmtree(tmp / "tok_en")
        shutil.rmtree(tmp / "tok_ja")
        manifest = {
            "seed": seed,
            "small": small,
            "threads": threads,
            "recipe": asdict(recipe),
            "sizes": asdict(sizes),
            "params": {"unet": sum(p.numel() for p in unet.parameters()),
                       "vae": sum(p.numel() for p in vae.parameters()),
                       "open_clip": sum(p.numel() for p in clip_model.parameters())},
            "checks": checks,
            "seconds": {**timings, "total": round(time.time() - started, 1)},
            "stages_from_cache": cache.loaded,
            "sha256": {str(p.relative_to(tmp)): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()},
        }
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _trailing(pipe):
    """The same pipeline with a trailing-timestep Euler scheduler (the few-step sampler)."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**{**pipe.components, "scheduler": models.scheduler("trailing")})


def verify(out_dir: str | Path) -> list[str]:
    """Files whose sha256 no longer matches the manifest (empty when the zoo is intact)."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "MANIFEST.json").read_text())
    return [name for name, digest in manifest["sha256"].items()
            if not (out_dir / name).is_file() or sha256(out_dir / name) != digest]
