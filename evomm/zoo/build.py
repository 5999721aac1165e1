"""Build the toy zoo: data, tokenizer, base decoder, Japanese LM and English VLM, saved as HF dirs.

`build_zoo(out_dir, seed)` runs every training stage in order and writes

    out_dir/data/{fitness,test}.jsonl + images/   held-out Japanese/English VQA (JSONL+PNG)
    out_dir/base/          MistralForCausalLM + tokenizer   (the shared base)
    out_dir/japanese_lm/   MistralForCausalLM + tokenizer   (base + Japanese instructions)
    out_dir/english_vlm/   LlavaForConditionalGeneration + LlavaProcessor
    out_dir/build_info.json  the config, per-stage losses and timings
    out_dir/hashes.json      sha256 of every file above

into a temporary directory next to `out_dir`, renamed into place only when all is written.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from evomm.zoo import data as D
from evomm.zoo import train as T
from evomm.zoo.tokenizer import IMAGE, train_tokenizer


@dataclass
class ZooConfig:
    """Sizes and training budget. `small()` is the seconds-long variant used by tests."""

    seed: int = 0
    train_items: int = 6000
    fitness_items: int = 200
    test_items: int = 400
    vocab_size: int = 400
    hidden: int = 64
    layers: int = 4
    vision_hidden: int = 64
    vision_layers: int = 2
    batch: int = 32
    vision_steps: int = 800
    vision_lr: float = 2e-3
    base_steps: int = 900
    base_lr: float = 3e-3
    japanese_steps: int = 400
    japanese_lr: float = 1e-3
    projector_steps: int = 900
    projector_lr: float = 2e-3
    vlm_steps: int = 800
    vlm_lr: float = 2e-3
    align_weight: float = 1.0  # projector stage
    full_align_weight: float = 1.0  # decoder + projector stage
    stage_seconds: dict = field(default_factory=dict)

    @classmethod
    def small(cls, seed: int = 0) -> "ZooConfig":
        return cls(seed=seed, train_items=100, fitness_items=10, test_items=10, vocab_size=300,
                   hidden=32, layers=2, vision_hidden=32, vision_layers=1, batch=4,
                   vision_steps=3, base_steps=3, japanese_steps=2, projector_steps=2, vlm_steps=2)


def text_config(cfg: ZooConfig, vocab_size: int):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden, intermediate_size=cfg.hidden * 3,
        num_hidden_layers=cfg.layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=cfg.hidden // 4, max_position_embeddings=256, sliding_window=None,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_theta=10000.0,
    )


def vision_config(cfg: ZooConfig):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=4, image_size=D.IMAGE_SIZE,
        patch_size=8, projection_dim=cfg.vision_hidden,
    )


def image_processor():
    from transformers import CLIPImageProcessor

    size = D.IMAGE_SIZE
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=[0.5] * 3, image_std=[0.5] * 3)


def num_image_tokens() -> int:
    return (D.IMAGE_SIZE // 8) ** 2  # patches; the CLS feature is dropped ("default" strategy)


def build_zoo(out_dir: str | Path, cfg: ZooConfig | None = None, num_threads: int = 1,
              log=print) -> Path:
    """Train every model of the zoo and write it to `out_dir` atomically."""
    from transformers import (CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, MistralForCausalLM)

    cfg = cfg or ZooConfig()
    torch.set_num_threads(num_threads)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    losses: dict[str, list[float]] = {}
    stage = StageClock(cfg.stage_seconds, log, "zoo")

    try:
        sizes = {"train": cfg.train_items, "fitness": cfg.fitness_items, "test": cfg.test_items}
        splits = D.make_splits(sizes, cfg.seed)
        held_out = {k: cfg.__dict__[f"{k}_items"] for k in ("fitness", "test")}
        D.write_dataset(tmp / "data", {"train": 0, **held_out}, cfg.seed)
        train_items = splits["train"]
        rng = random.Random(cfg.seed)
        stage("data")

        tokenizer = train_tokenizer(T.tokenizer_corpus(train_items), cfg.vocab_size)
        vocab = len(tokenizer)
        images = T.image_tensor(train_items)
        stage("tokenizer")

        torch.manual_seed(cfg.seed)
        vision = CLIPVisionModel(vision_config(cfg))
        heads = T.vision_heads(cfg.vision_hidden)
        losses["vision"] = T.train_vision(vision, heads, train_items, images, cfg.vision_steps,
                                          cfg.vision_lr, cfg.batch * 2, cfg.seed)
        vision.eval()
        stage("vision")

        torch.manual_seed(cfg.seed + 1)
        base = MistralForCausalLM(text_config(cfg, vocab))
        losses["base"] = T.train_decoder(base, tokenizer, T.base_corpus(train_items, rng), cfg.base_steps,
                                         cfg.base_lr, cfg.batch, cfg.seed + 2, "base decoder")
        _save_lm(base, tokenizer, tmp / "base")
        stage("base")

        japanese = MistralForCausalLM.from_pretrained(tmp / "base")
        losses["japanese"] = T.train_decoder(japanese, tokenizer, T.japanese_corpus(train_items),
                                             cfg.japanese_steps, cfg.japanese_lr, cfg.batch,
                                             cfg.seed + 3, "japanese lm")
        _save_lm(japanese, tokenizer, tmp / "japanese_lm")
        stage("japanese_lm")

        torch.manual_seed(cfg.seed + 4)
        llava_config = LlavaConfig(
            vision_config=vision_config(cfg), text_config=text_config(cfg, vocab),
            image_token_index=tokenizer.convert_tokens_to_ids(IMAGE), projector_hidden_act="gelu",
            vision_feature_layer=-1, vision_feature_select_strategy="default",
        )
        vlm = LlavaForConditionalGeneration(llava_config)
        vlm.model.vision_tower.load_state_dict(vision.state_dict())
        vlm.model.language_model.load_state_dict(base.model.state_dict())
        vlm.lm_head.load_state_dict(base.lm_head.state_dict())
        examples = T.vlm_corpus(train_items, IMAGE)
        common = dict(base=base, tokenizer=tokenizer, examples=examples, images=images,
                      batch=cfg.batch, image_tokens=num_image_tokens())
        losses["projector"] = T.train_vlm(vlm, steps=cfg.projector_steps, lr=cfg.projector_lr,
                                          align_weight=cfg.align_weight,
                                          seed=cfg.seed + 5, desc="vlm projector",
                                          train_decoder_too=False, **common)
        losses["vlm"] = T.train_vlm(vlm, steps=cfg.vlm_steps, lr=cfg.vlm_lr, seed=cfg.seed + 6,
                                    align_weight=cfg.full_align_weight,
                                    desc="vlm full", train_decoder_too=True, **common)
        for p in vlm.parameters():
            p.requires_grad_(True)
        processor = LlavaProcessor(image_processor=image_processor(), tokenizer=tokenizer,
                                   patch_size=8, vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1, image_token=IMAGE)
        vlm.save_pretrained(tmp / "english_vlm")
        processor.save_pretrained(tmp / "english_vlm")
        stage("english_vlm")

        info = {"config": asdict(cfg), "prompt": T.PROMPT, "image_tokens": num_image_tokens(),
                "final_losses": {k: sum(v[-50:]) / max(1, len(v[-50:])) for k, v in losses.items()}}
        (tmp / "build_info.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
        (tmp / "hashes.json").write_text(json.dumps(hash_tree(tmp), indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class StageClock:
    """Seconds per build stage: `clock("base")` logs and records the time since the last call."""

    def __init__(self, record: dict, log, label: str) -> None:
        self.record, self.log, self.label = record, log, label
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.record[name] = round(now - self.last, 1)
        self.log(f"[{self.label}] {name}: {now - self.last:.0f}s")
        self.last = now


def _save_lm(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


HASHED_SUFFIXES = (".safetensors", ".json", ".jsonl", ".png", ".jinja", ".txt")


def hash_tree(root: str | Path) -> dict[str, str]:
    """sha256 of every shipped file under root (relative POSIX path -> hex digest)."""
    root = Path(root)
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in HASHED_SUFFIXES and path.name != "hashes.json"
    }
