"""Training stages of the toy zoo: vision tower, shared base, Japanese LM, English VLM.

The zoo imitates how the real parents of EvoVLM-JP came to be, at toy scale:
- a CLIP-like vision tower trained on its own (here: to name the attributes of a scene);
- a bilingual base decoder (Mistral architecture) pretrained on text about scenes:
  English and Japanese QA over written descriptions, and English-Japanese sentence pairs;
- a Japanese LM: the base fine-tuned on Japanese instructions only (full-sentence answers);
- an English VLM: vision tower + projector + the base, trained on English image QA only,
  first the projector alone (captioning and aligning the image with its description), then
  projector and decoder together.

Each stage is a plain loop over seeded mini-batches, so a build is reproducible from its seed
on one CPU thread.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from evomm.zoo import data as D

PROMPT = "USER: {context} {question} ASSISTANT:"
TRANSLATE_EN_JA = "Translate into Japanese:"
TRANSLATE_JA_EN = "英語に訳してください："


def format_prompt(question: str, context: str = "") -> str:
    """The one prompt layout every zoo model is trained and evaluated with."""
    return PROMPT.format(context=context, question=question).replace("  ", " ")


@dataclass
class Example:
    """A training sequence: prompt (not scored) + target (scored), maybe with an image."""

    prompt: str
    target: str
    image: int = -1  # index into the image tensor, -1 for text only
    teacher_prompt: str = ""  # text-context version of an image prompt (for alignment)


def image_tensor(items: Sequence[D.Item]) -> torch.Tensor:
    """All scenes drawn and normalised exactly as the shipped CLIPImageProcessor does."""
    arrays = np.stack([np.asarray(D.draw(item.scene), dtype=np.float32) for item in items])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


# ----------------------------------------------------------------------------- batching


def encode(tokenizer, examples: Sequence[Example], image_tokens: int = 0):
    """Right-padded input ids, labels (-100 on prompt and padding) and attention mask."""
    rows, labels = [], []
    for ex in examples:
        prompt = ex.prompt.replace(tokenizer.image_token, tokenizer.image_token * image_tokens)
        prompt_ids = tokenizer(prompt).input_ids
        target_ids = tokenizer(" " + ex.target, add_special_tokens=False).input_ids
        ids = prompt_ids + target_ids + [tokenizer.eos_token_id]
        rows.append(ids)
        labels.append([-100] * len(prompt_ids) + target_ids + [tokenizer.eos_token_id])
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    label_ids = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return input_ids, label_ids, mask


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def run_loop(
    params: Sequence[torch.nn.Parameter],
    loss_fn: Callable[[int], torch.Tensor],
    steps: int,
    lr: float,
    desc: str,
    weight_decay: float = 0.0,
    log_every: int = 100,
) -> list[float]:
    """AdamW with warm-up and cosine decay; `loss_fn(step)` draws its own batch."""
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, mininterval=5, leave=False)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * _schedule(step, steps, max(1, steps // 20))
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.3f}")
    return losses


# ----------------------------------------------------------------------------- corpora


def short_answer(item: D.Item) -> str:
    """The base's Japanese answer style: the bare value (the full sentences are the JA LM's)."""
    return D.answer(item, "ja").split("。")[0] + "。"


def base_corpus(items: Sequence[D.Item], rng: random.Random) -> list[Example]:
    """Bilingual pretraining text about scenes.

    QA in both languages over the language-neutral scene notation (English answers in full,
    Japanese ones short: full Japanese sentences are the Japanese LM's skill), descriptions
    of the notation in both languages, and English-Japanese sentence pairs.
    """
    out = []
    for item in items:
        code = D.markup(item.scene)
        en_desc, ja_desc = D.describe(item.scene, "en"), D.describe(item.scene, "ja")
        out.append(Example(format_prompt(D.question(item, "en"), code), D.answer(item, "en")))
        out.append(Example(format_prompt(D.question(item, "ja"), code), short_answer(item)))
        lang = rng.choice(("en", "ja"))
        out.append(Example(format_prompt(D.CAPTION_QUESTION[lang == "ja"], code), D.describe(item.scene, lang)))
        if rng.random() < 0.5:
            out.append(Example(format_prompt(en_desc, TRANSLATE_EN_JA), ja_desc))
        else:
            out.append(Example(format_prompt(ja_desc, TRANSLATE_JA_EN), en_desc))
    return out


def japanese_corpus(items: Sequence[D.Item]) -> list[Example]:
    """Japanese instruction data: full-sentence Japanese answers about notated scenes."""
    return [Example(format_prompt(D.question(item, "ja"), D.markup(item.scene)), D.answer(item, "ja"))
            for item in items]


def vlm_corpus(items: Sequence[D.Item], image_token: str) -> list[Example]:
    """English image QA and captions; each keeps its notation twin for the alignment loss."""
    out = []
    for index, item in enumerate(items):
        code = D.markup(item.scene)
        for question, target in ((D.question(item, "en"), D.answer(item, "en")),
                                 (D.CAPTION_QUESTION[0], D.describe(item.scene, "en"))):
            out.append(Example(format_prompt(question, image_token), target, index,
                               format_prompt(question, code)))
    return out


def tokenizer_corpus(items: Sequence[D.Item]) -> list[str]:
    texts = [format_prompt("", ""), TRANSLATE_EN_JA, TRANSLATE_JA_EN, *D.CAPTION_QUESTION]
    for item in items:
        for lang in ("en", "ja"):
            texts += [D.question(item, lang), D.answer(item, lang), D.describe(item.scene, lang)]
        texts.append(D.markup(item.scene))
    return texts


# ----------------------------------------------------------------------------- stages


def train_vision(vision, heads: torch.nn.ModuleDict, items, images, steps, lr, batch, seed) -> list[float]:
    """Teach the vision tower every attribute of a scene (a stand-in for CLIP pretraining)."""
    targets = _attribute_targets(items)
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(len(items), (batch,), generator=gen)
        feats = vision(pixel_values=images[idx]).last_hidden_state[:, 1:].mean(1)
        loss = torch.zeros(())
        for name, head in heads.items():
            target = targets[name][idx]
            keep = target >= 0
            if keep.any():
                loss = loss + F.cross_entropy(head(feats[keep]), target[keep])
        return loss

    params = list(vision.parameters()) + list(heads.parameters())
    return run_loop(params, loss_fn, steps, lr, "vision tower")


def vision_heads(hidden: int) -> torch.nn.ModuleDict:
    sizes = {"kind": 2, "background": len(D.BACKGROUNDS), "colour": len(D.COLOURS), "shape": len(D.SHAPES),
             "count": len(D.COUNTS), "signal": len(D.SIGNALS)}
    heads = {name: torch.nn.Linear(hidden, n) for name, n in sizes.items()}
    heads.update({f"cell{i}": torch.nn.Linear(hidden, 2) for i in range(4)})
    return torch.nn.ModuleDict(heads)


def _attribute_targets(items) -> dict[str, torch.Tensor]:
    def index(options, value):
        return sorted(options).index(value)

    rows: dict[str, list[int]] = {k: [] for k in ("kind", "background", "colour", "shape", "count", "signal")}
    rows.update({f"cell{i}": [] for i in range(4)})
    for item in items:
        s = item.scene
        shapes = s.kind == "shapes"
        rows["kind"].append(int(shapes))
        rows["background"].append(index(D.BACKGROUNDS, s.background))
        rows["colour"].append(index(D.COLOURS, s.colour) if shapes else -1)
        rows["shape"].append(index(D.SHAPES, s.shape) if shapes else -1)
        rows["count"].append(len(s.cells) - 1 if shapes else -1)
        rows["signal"].append(-1 if shapes else index(D.SIGNALS, s.colour))
        for i, cell in enumerate(sorted(D.POSITIONS)):
            rows[f"cell{i}"].append(int(cell in s.cells) if shapes else -1)
    return {k: torch.tensor(v) for k, v in rows.items()}


def train_decoder(model, tokenizer, examples, steps, lr, batch, seed, desc) -> list[float]:
    """Causal-LM fine-tuning of a text-only decoder on prompt/target examples."""
    rng = random.Random(seed)

    def loss_fn(step: int) -> torch.Tensor:
        input_ids, labels, mask = encode(tokenizer, rng.sample(examples, batch))
        return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    model.train()
    losses = run_loop([p for p in model.parameters() if p.requires_grad], loss_fn, steps, lr, desc)
    model.eval()
    return losses


def train_vlm(vlm, base, tokenizer, examples, images, steps, lr, batch, seed, desc,
              align_weight: float, image_tokens: int, train_decoder_too: bool) -> list[float]:
    """LLaVA training on English image QA + captions, with an optional alignment loss.

    The alignment loss asks the decoder, reading the image, to hold the same hidden states
    (at every layer, on the question and answer tokens) as the frozen base holds when it
    reads the scene's notation instead. Image tokens then behave like a
    description, which any language pathway of the base can read — not only the English
    question pathway that the QA loss alone would carve out.
    """
    rng = random.Random(seed)
    lm = vlm.model.language_model
    for p in vlm.model.vision_tower.parameters():
        p.requires_grad_(False)
    for p in lm.parameters():
        p.requires_grad_(train_decoder_too)
    vlm.lm_head.requires_grad_(train_decoder_too)

    def loss_fn(step: int) -> torch.Tensor:
        chosen = rng.sample(examples, batch)
        input_ids, labels, mask = encode(tokenizer, chosen, image_tokens)
        pixels = images[torch.tensor([ex.image for ex in chosen])]
        out = vlm(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, labels=labels,
                  output_hidden_states=align_weight > 0)
        loss = out.loss
        if align_weight > 0:
            t_ids, t_labels, t_mask = encode(tokenizer, [Example(ex.teacher_prompt, ex.target) for ex in chosen])
            with torch.no_grad():
                teacher = base(input_ids=t_ids, attention_mask=t_mask, output_hidden_states=True)
            loss = loss + align_weight * suffix_alignment(out.hidden_states, labels, teacher.hidden_states,
                                                           t_labels, input_ids, t_ids, tokenizer)
        return loss

    vlm.train()
    params = [p for p in vlm.parameters() if p.requires_grad]
    losses = run_loop(params, loss_fn, steps, lr, desc)
    vlm.eval()
    return losses


def suffix_alignment(student_h, s_labels, teacher_h, t_labels, s_ids, t_ids, tokenizer) -> torch.Tensor:
    """MSE between hidden states on the shared suffix (question tail + answer) of both prompts.

    Both sequences end with the same question and answer tokens; they are aligned from the
    end of each row. Only the answer tokens and the 4 tokens before them are compared.
    """
    losses = []
    pad = tokenizer.pad_token_id
    for row in range(s_ids.shape[0]):
        s_len = int((s_ids[row] != pad).sum())
        t_len = int((t_ids[row] != pad).sum())
        answer_len = int((s_labels[row] != -100).sum())
        n = answer_len + 4
        s_slice = slice(s_len - n, s_len)
        t_slice = slice(t_len - n, t_len)
        for layer in range(1, len(student_h)):
            s = student_h[layer][row, s_slice]
            t = teacher_h[layer][row, t_slice]
            losses.append(F.mse_loss(s, t) / (t.pow(2).mean() + 1e-6))
    return torch.stack(losses).mean()
