"""Training loops of the toy SDXL zoo (VAE, denoiser, few-step distillation, open_clip).

All loops run a fixed number of steps from a seed, so a build is reproducible on one CPU
thread; none of them is meant for real checkpoints.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data

TIME_IDS = (32.0, 32.0, 0.0, 0.0, 32.0, 32.0)  # original size, crop top-left, target size


def _cosine_lr(opt: torch.optim.Optimizer, step: int, total: int, base: list[float], warmup: int = 50):
    scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    for group, lr in zip(opt.param_groups, base):
        group["lr"] = lr * max(scale, 0.02)


def train_vae(vae, images: torch.Tensor, steps: int, batch: int = 64, lr: float = 2e-3,
              kl_weight: float = 1e-5, seed: int = 0, desc: str = "vae") -> None:
    """Reconstruction + a small KL term (keeps the latent space smooth enough to diffuse in)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    for step in (bar := tqdm(range(steps), desc=desc, mininterval=5)):
        _cosine_lr(opt, step, steps, [lr])
        x = images[torch.randint(len(images), (batch,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + kl_weight * posterior.kl().mean() / z[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()


@torch.no_grad()
def latent_scaling(vae, images: torch.Tensor) -> float:
    """SDXL's `scaling_factor`: 1 / std of the latents, so the UNet sees unit-variance inputs."""
    return float(1.0 / encode_latents(vae, images[:512], scaling_factor=1.0).std())


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, scaling_factor: float, batch: int = 256) -> torch.Tensor:
    out = [vae.encode(images[i : i + batch]).latent_dist.mean for i in range(0, len(images), batch)]
    return torch.cat(out) * scaling_factor


@torch.no_grad()
def vae_psnr(vae, images: torch.Tensor) -> float:
    recon = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
    mse = F.mse_loss((recon + 1) / 2, (images + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def caption_embeddings(pipe, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled) exactly as the SDXL pipeline computes them for `captions`."""
    embeds, _, pooled, _ = pipe.encode_prompt(captions, device=torch.device("cpu"),
                                              do_classifier_free_guidance=False)
    return embeds, pooled


def train_denoiser(
    unet,
    latents: torch.Tensor,
    caption_choices: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    embeds: torch.Tensor,
    pooled: torch.Tensor,
    steps: int,
    batch: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    cfg_dropout: float = 0.1,
    timesteps: list[int] | None = None,
    lr_multipliers: Callable[[str], float] | None = None,
    target: Callable[..., torch.Tensor] | None = None,
    desc: str = "unet",
) -> None:
    """Epsilon-prediction training of an SDXL UNet on precomputed caption embeddings.

    `caption_choices(indices, gen)` picks a caption row of `embeds` per sample. `timesteps`
    restricts training to the given ones (a few-step sampler visits only those).
    `lr_multipliers(name)` scales the learning rate per parameter.
    `target(noisy, t, cond, pooled, time_ids)`, when given, replaces the true noise as the
    regression target (guidance distillation: see `guided_teacher`).
    """
    from diffusers import DDPMScheduler

    from .models import SCHEDULER_CONFIG

    ddpm = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "timestep_spacing"})
    gen = torch.Generator().manual_seed(seed)
    groups: dict[float, list] = {}
    for name, param in unet.named_parameters():
        mult = lr_multipliers(name) if lr_multipliers else 1.0
        groups.setdefault(mult, []).append(param)
    base_lrs = [lr * m for m in groups]
    opt = torch.optim.AdamW([{"params": p, "lr": l} for p, l in zip(groups.values(), base_lrs)],
                            weight_decay=0.0)
    time_ids = torch.tensor(TIME_IDS).repeat(batch, 1)
    unet.train()
    for step in (bar := tqdm(range(steps), desc=desc, mininterval=5)):
        _cosine_lr(opt, step, steps, base_lrs)
        idx = torch.randint(len(latents), (batch,), generator=gen)
        x0 = latents[idx]
        eps = torch.randn(x0.shape, generator=gen)
        if timesteps is None:
            t = torch.randint(0, 1000, (batch,), generator=gen)
        else:
            t = torch.tensor(timesteps)[torch.randint(len(timesteps), (batch,), generator=gen)]
        caps = caption_choices(idx, gen)
        cond, pool = embeds[caps].clone(), pooled[caps].clone()
        if cfg_dropout > 0:
            drop = torch.rand(batch, generator=gen) < cfg_dropout
            cond[drop] = 0.0
            pool[drop] = 0.0
        noisy = ddpm.add_noise(x0, eps, t)
        pred = unet(noisy, t, encoder_hidden_states=cond,
                    added_cond_kwargs={"text_embeds": pool, "time_ids": time_ids}).sample
        loss = F.mse_loss(pred, eps if target is None else target(noisy, t, cond, pool, time_ids))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    unet.eval()


def guided_teacher(teacher, guidance: float) -> Callable[..., torch.Tensor]:
    """Regression target of guidance distillation: the teacher's classifier-free-guided noise.

    A student trained on it draws without guidance what the teacher draws with it, so one
    UNet pass per step replaces two; at 4 trailing steps that is most of what separates
    the toy base from a few-step model. The unconditional input is all zeros, as in the
    caption dropout of training and SDXL's `force_zeros_for_empty_prompt`.
    """
    teacher.eval().requires_grad_(False)

    @torch.no_grad()
    def target(noisy, t, cond, pooled, time_ids):
        out = teacher(torch.cat([noisy, noisy]), torch.cat([t, t]),
                      encoder_hidden_states=torch.cat([torch.zeros_like(cond), cond]),
                      added_cond_kwargs={"text_embeds": torch.cat([torch.zeros_like(pooled), pooled]),
                                         "time_ids": torch.cat([time_ids, time_ids])}).sample
        uncond, conditioned = out.chunk(2)
        return uncond + guidance * (conditioned - uncond)

    return target


def train_open_clip(model, tokenizer, steps: int, batch: int = 128, lr: float = 2e-3,
                    seed: int = 0, desc: str = "clip") -> None:
    """Image-to-caption and caption-to-image contrastive training over the 18 classes.

    Every batch scores fresh images against one caption per class (random phrasing), so the
    negatives never include another picture of the same class.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    texts = [[data.english_caption(lab, t) for t in range(len(data.EN_TEMPLATES))]
             for lab in range(data.NUM_CLASSES)]
    tokens = torch.stack([tokenizer(row) for row in texts])  # (classes, templates, ctx)
    model.train()
    for step in (bar := tqdm(range(steps), desc=desc, mininterval=5)):
        _cosine_lr(opt, step, steps, [lr])
        images, labels = data.make_images(batch, seed=seed * 100_003 + step)
        pick = torch.randint(tokens.shape[1], (data.NUM_CLASSES,), generator=gen)
        text = tokens[torch.arange(data.NUM_CLASSES), pick]
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(text), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        loss_i = F.cross_entropy(logits, labels)
        onehot = F.one_hot(labels, data.NUM_CLASSES).float().T
        present = onehot.sum(1) > 0
        target = onehot[present] / onehot[present].sum(1, keepdim=True)
        loss_t = -(target * logits.T[present].log_softmax(-1)).sum(-1).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


@torch.no_grad()
def clip_accuracy(model, tokenizer, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose best-matching class caption is their own."""
    text = tokenizer([data.english_caption(lab) for lab in range(data.NUM_CLASSES)])
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(text), dim=-1)
    return float(((img @ txt.T).argmax(-1) == labels).float().mean())
