"""Build the toy EvoLLM-JP zoo: a bilingual base, a Japanese LM and two English math LMs.

The zoo imitates how EvoLLM-JP's parents came to be, at toy scale (all `MistralForCausalLM`,
8 decoder layers, fine-tuned from one shared base):

- **base** (Mistral-7B): bilingual pretraining on parallel text. It translates questions
  between English and Japanese, writes the *expression* a question asks for in either language
  (`11 + 10 - 18`: reading, language-neutral), drills arithmetic facts (`12 + 9 = 21`, `7 × 5 = 35`:
  computing, language-neutral) and answers English addition problems. It never saw a Japanese
  answer, nor a word problem that subtracts or multiplies.
- **japanese_lm** (shisa-gamma): base + Japanese addition problems with Japanese step-by-step
  answers (`2 + 9 = 11です。答えは11です。`). It writes Japanese but only adds.
- **math_a** (WizardMath): base + English subtraction and multi-step problems, long training.
- **math_b** (Abel): base + English multiplication problems, long training.

Held-out Japanese problems of all four kinds (`data/{fitness,test}.jsonl`) are what the merge
is scored on: a merge that reads Japanese, computes like the math LMs and answers in Japanese
can solve every kind; each source alone solves at most one or two, and the math LMs answer in
English. `build_math_zoo(out_dir, cfg)` writes everything into a temporary directory and renames
it into place when done (like `evomm.zoo.build`).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from evomm.zoo import train as T
from evomm.zoo.build import hash_tree
from evomm.zoo.tokenizer import train_tokenizer
from evomm.zoo_math import data as D

#: the prompt every toy math model is trained and evaluated with (`{input}`: the question)
TEMPLATE = "USER: {input} ASSISTANT:"
EXPRESSION_TAG = "EXPR:"
TRANSLATE_EN_JA = "Translate into Japanese:"
TRANSLATE_JA_EN = "英語に訳してください："
SOURCES = ("base", "japanese_lm", "math_a", "math_b")


@dataclass
class MathZooConfig:
    """Sizes and training budget. `small()` is the seconds-long variant used by tests."""

    seed: int = 0
    train_items: int = 6000
    fitness_items: int = 200
    test_items: int = 400
    vocab_size: int = 400
    hidden: int = 96
    layers: int = 8
    batch: int = 32
    base_steps: int = 1200
    base_lr: float = 3e-3
    japanese_steps: int = 400
    japanese_lr: float = 5e-4
    math_steps: int = 800
    math_lr: float = 5e-4
    stage_seconds: dict = field(default_factory=dict)

    @classmethod
    def small(cls, seed: int = 0) -> "MathZooConfig":
        return cls(seed=seed, train_items=120, fitness_items=8, test_items=8, vocab_size=300, hidden=32,
                   layers=2, batch=4, base_steps=3, japanese_steps=2, math_steps=2)


def prompt(question: str) -> str:
    return TEMPLATE.replace("{input}", question)


def expression(problem: D.Problem) -> str:
    symbols = {"+": "+", "-": "-", "*": "×"}
    parts = [str(problem.numbers[0])]
    for op, n in zip(problem.ops, problem.numbers[1:]):
        parts += [symbols[op], str(n)]
    return " ".join(parts)


def base_corpus(items: list[D.Problem], rng: random.Random) -> list[T.Example]:
    """Parallel bilingual text, language-neutral expressions, arithmetic facts, English addition QA."""
    out = []
    for p in items:
        (en_q, en_a), (ja_q, _) = p.text("en"), p.text("ja")
        if rng.random() < 0.5:
            out.append(T.Example(prompt(f"{TRANSLATE_EN_JA} {en_q}"), ja_q))
        else:
            out.append(T.Example(prompt(f"{TRANSLATE_JA_EN} {ja_q}"), en_q))
        for question in (en_q, ja_q):
            out.append(T.Example(prompt(f"{EXPRESSION_TAG} {question}"), expression(p)))
        for _ in range(2):
            out.append(T.Example("", arithmetic_fact(rng)))
        if p.kind == "add":
            out.append(T.Example(prompt(en_q), en_a))
    return out


def arithmetic_fact(rng: random.Random) -> str:
    """One language-neutral fact in the ranges the problems use: `12 + 9 = 21`, `14 - 13 = 1`, `7 × 5 = 35`."""
    op = rng.choice("+-×")
    if op == "+":
        a, b = rng.randint(1, 30), rng.randint(1, 20)
        return f"{a} + {b} = {a + b}"
    if op == "-":
        a = rng.randint(2, 40)
        b = rng.randint(1, a - 1)
        return f"{a} - {b} = {a - b}"
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"{a} × {b} = {a * b}"


def qa_corpus(items: list[D.Problem], lang: str, kinds: tuple[str, ...]) -> list[T.Example]:
    return [T.Example(prompt(q), a) for p in items if p.kind in kinds for q, a in [p.text(lang)]]


def tokenizer_corpus(items: list[D.Problem]) -> list[str]:
    texts = [TEMPLATE, EXPRESSION_TAG, TRANSLATE_EN_JA, TRANSLATE_JA_EN, "0 1 2 3 4 5 6 7 8 9 + - × ="]
    for p in items:
        for lang in ("en", "ja"):
            texts += list(p.text(lang))
    return texts


def text_config(cfg: MathZooConfig, vocab_size: int):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden, intermediate_size=cfg.hidden * 3,
        num_hidden_layers=cfg.layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=cfg.hidden // 4, max_position_embeddings=256, sliding_window=None,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_theta=10000.0,
    )


def build_math_zoo(out_dir: str | Path, cfg: MathZooConfig | None = None, num_threads: int = 1,
                   log=print) -> Path:
    """Train every model of the math zoo and write it to `out_dir` atomically."""
    from transformers import MistralForCausalLM

    cfg = cfg or MathZooConfig()
    torch.set_num_threads(num_threads)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    losses: dict[str, list[float]] = {}
    timer = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal timer
        now = time.perf_counter()
        cfg.stage_seconds[name] = round(now - timer, 1)
        log(f"[math zoo] {name}: {now - timer:.0f}s")
        timer = now

    try:
        splits = D.split_problems(cfg.seed, {"train": cfg.train_items, "fitness": cfg.fitness_items,
                                             "test": cfg.test_items})
        (tmp / "data").mkdir(parents=True)
        for name in ("fitness", "test"):
            D.write_split(tmp / "data" / f"{name}.jsonl", splits[name], "ja")
        train = splits["train"]
        rng = random.Random(cfg.seed)
        tokenizer = train_tokenizer(tokenizer_corpus(train), cfg.vocab_size, split_digits=True)
        stage("data")

        torch.manual_seed(cfg.seed + 1)
        base = MistralForCausalLM(text_config(cfg, len(tokenizer)))
        losses["base"] = T.train_decoder(base, tokenizer, base_corpus(train, rng), cfg.base_steps,
                                         cfg.base_lr, cfg.batch, cfg.seed + 2, "math base")
        _save(base, tokenizer, tmp / "base")
        stage("base")

        plans = {"japanese_lm": (qa_corpus(train, "ja", ("add",)), cfg.japanese_steps, cfg.japanese_lr),
                 "math_a": (qa_corpus(train, "en", ("sub", "multi")), cfg.math_steps, cfg.math_lr),
                 "math_b": (qa_corpus(train, "en", ("mul",)), cfg.math_steps, cfg.math_lr)}
        for offset, (name, (examples, steps, lr)) in enumerate(plans.items(), start=3):
            model = MistralForCausalLM.from_pretrained(tmp / "base", dtype=torch.float32)
            losses[name] = T.train_decoder(model, tokenizer, examples, steps, lr, cfg.batch, cfg.seed + offset, name)
            _save(model, tokenizer, tmp / name)
            stage(name)

        info = {"config": asdict(cfg), "template": TEMPLATE,
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


def _save(model, tokenizer, path: Path) -> None:
    """fp16 on disk (the zoo ships in a few MB); every later stage reads these rounded weights."""
    model.to(torch.float16).save_pretrained(path)
    model.to(torch.float32)
    tokenizer.save_pretrained(path)
