"""Build the toy EvoLLM-JP zoo: a bilingual base, a Japanese LM and two English math LMs.

The zoo imitates how EvoLLM-JP's parents came to be, at toy scale (all `MistralForCausalLM`,
8 decoder layers, fine-tuned from one shared base):

- **base** (Mistral-7B): bilingual pretraining. It translates questions between English and
  Japanese, drills arithmetic facts (`12 + 9 = 21`, `7 × 5 = 35`), and writes the *expression*
  a question asks for (`11 + 10 - 18`) in either language, each Japanese row aligned to its
  English twin (`train_base`). It never sees a worded answer.
- **japanese_lm** (shisa-gamma): base + Japanese problems of all kinds with Japanese answers,
  tuning only the outer layers, embeddings and head: it reads and writes Japanese but computes
  with the base's middle layers, badly.
- **math_a** (WizardMath): base + English subtraction and multi-step problems (middle layers).
- **math_b** (Abel): base + English multiplication problems (middle layers).

Held-out Japanese problems of all four kinds (`data/{fitness,test}.jsonl`) are what the merge
is scored on: a merge that reads Japanese, computes like the math LMs and answers in Japanese
could solve every kind; the math LMs answer in English. In this zoo no merge does yet
(docs/toy_math_zoo.md). `build_math_zoo(out_dir, cfg)` writes everything into a temporary directory and renames
it into place when done (like `evomm.zoo.build`).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from evomm.zoo import train as T
from evomm.zoo.build import StageClock, hash_tree, text_config
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
    japanese_steps: int = 300
    japanese_lr: float = 1e-3
    math_steps: int = 800
    math_lr: float = 1e-3
    base_worded: float = 0.0  # share of problems the base also sees answered (both languages)
    align_weight: float = 1.0  # base: Japanese expression rows pulled toward their English twins
    replay: float = 0.0  # share of base-corpus examples in each specialist's data
    stage_seconds: dict = field(default_factory=dict)

    @classmethod
    def small(cls, seed: int = 0) -> "MathZooConfig":
        return cls(seed=seed, train_items=120, fitness_items=8, test_items=8, vocab_size=300, hidden=32,
                   layers=4, batch=4, base_steps=3, japanese_steps=2, math_steps=2)


def prompt(question: str) -> str:
    return TEMPLATE.replace("{input}", question)


def expression(problem: D.Problem) -> str:
    symbols = {"+": "+", "-": "-", "*": "×"}
    parts = [str(problem.numbers[0])]
    for op, n in zip(problem.ops, problem.numbers[1:]):
        parts += [symbols[op], str(n)]
    return " ".join(parts)


def base_corpus(items: list[D.Problem], rng: random.Random, worded: float = 0.0) -> list[T.Example]:
    """Parallel bilingual text and language-neutral arithmetic facts (the expressions are paired
    and aligned across languages by `train_base`); with `worded` > 0, that share of the problems
    also with their worded answers in both languages (a base that has seen the task)."""
    out = []
    for p in items:
        if worded > 0 and rng.random() < worded:
            out += [T.Example(prompt(q), a) for q, a in (p.text("en"), p.text("ja"))]
        (en_q, _), (ja_q, _) = p.text("en"), p.text("ja")
        if rng.random() < 0.5:
            out.append(T.Example(prompt(f"{TRANSLATE_EN_JA} {en_q}"), ja_q))
        else:
            out.append(T.Example(prompt(f"{TRANSLATE_JA_EN} {ja_q}"), en_q))
        for _ in range(2):
            out.append(T.Example("", arithmetic_fact(rng)))
    return out


def expression_pairs(items: list[D.Problem]) -> list[tuple[T.Example, T.Example]]:
    """(English, Japanese) question -> the expression it asks for (`11 + 10 - 18`), one pair per problem."""
    return [(T.Example(prompt(p.text("en")[0]), expression(p)), T.Example(prompt(p.text("ja")[0]), expression(p)))
            for p in items]


def train_base(model, tokenizer, items: list[D.Problem], cfg: "MathZooConfig", rng: random.Random) -> list[float]:
    """Pretrain the base: half of each batch from `base_corpus`, half English/Japanese expression pairs.

    Each Japanese expression row is also pulled toward its English twin: at every layer, on the
    expression tokens and the 4 before them, its hidden states must match the English row's
    (MSE over the teacher's mean square, the English side detached), as the toy VLM aligns image
    tokens with the notation. What a math LM later learns on top of an English question then
    reads the same from a Japanese one: the transfer the merge depends on (docs/toy_math_zoo.md).
    """

    corpus = base_corpus(items, rng, cfg.base_worded)
    pairs = expression_pairs(items)
    sampler = random.Random(cfg.seed + 2)
    half = max(1, cfg.batch // 2)
    n_pairs = max(1, half // 2)

    def loss_fn(step: int) -> torch.Tensor:
        chosen = sampler.sample(pairs, n_pairs)
        rows = [en for en, _ in chosen] + [ja for _, ja in chosen] + sampler.sample(corpus, half)
        input_ids, labels, mask = T.encode(tokenizer, rows)
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels, output_hidden_states=True)
        en, ja = slice(0, n_pairs), slice(n_pairs, 2 * n_pairs)
        align = T.suffix_alignment(tuple(h[ja] for h in out.hidden_states), labels[ja],
                                    tuple(h[en].detach() for h in out.hidden_states), labels[en],
                                    input_ids[ja], input_ids[en], tokenizer)
        return out.loss + cfg.align_weight * align

    model.train()
    losses = T.run_loop([p for p in model.parameters() if p.requires_grad], loss_fn, cfg.base_steps, cfg.base_lr,
                        "math base")
    model.eval()
    return losses


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


def build_math_zoo(out_dir: str | Path, cfg: MathZooConfig | None = None, num_threads: int = 1,
                   log=print) -> Path:
    """Train every model of the math zoo and write it to `out_dir` atomically."""
    from transformers import MistralForCausalLM

    from evomm.io.outdir import atomic_output_dir

    cfg = cfg or MathZooConfig()
    torch.set_num_threads(num_threads)
    losses: dict[str, list[float]] = {}
    stage = StageClock(cfg.stage_seconds, log, "math zoo")
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
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
        losses["base"] = train_base(base, tokenizer, train, cfg, rng)
        _save(base, tokenizer, tmp / "base")
        stage("base")

        for name in SOURCES[1:]:
            losses[name] = train_specialist(name, tmp / "base", tmp / name, train, cfg, tokenizer)
            stage(name)

        info = {"config": asdict(cfg), "template": TEMPLATE,
                "final_losses": {k: sum(v[-50:]) / max(1, len(v[-50:])) for k, v in losses.items()}}
        (tmp / "build_info.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
        (tmp / "hashes.json").write_text(json.dumps(hash_tree(tmp), indent=1))
    out = Path(out_dir)
    return out


#: what each specialist is fine-tuned on: (language, problem kinds)
SPECIALTIES = {"japanese_lm": ("ja", D.KINDS), "math_a": ("en", ("sub", "multi")), "math_b": ("en", ("mul",))}


def specialist_corpus(name: str, train: list[D.Problem], cfg: MathZooConfig) -> list[T.Example]:
    """The specialty's QA plus a `replay` share of the base's own corpus (drawn from the seed).

    Replay keeps a fine-tune close to its base (the math LMs keep reading Japanese questions),
    as a real instruction tune moves a 7B model little; without it every task vector rewrote
    the same toy weights and no merge of two of them answered anything (docs/toy_math_zoo.md).
    """
    lang, kinds = SPECIALTIES[name]
    own = qa_corpus(train, lang, kinds)
    if cfg.replay <= 0:
        return own
    rng = random.Random(cfg.seed + 100 + list(SPECIALTIES).index(name))
    pool = base_corpus(train, random.Random(cfg.seed))
    return own + rng.sample(pool, min(len(pool), int(len(own) * cfg.replay / (1 - cfg.replay))))


def trainable_layers(name: str, num_layers: int) -> tuple[list[int], bool]:
    """(decoder layers a specialist fine-tunes, whether it also tunes embeddings, final norm and head).

    Where a skill lives in a real LLM is the toy's design choice: the Japanese LM tunes the outer
    quarter of layers at each end plus the embeddings and head (reading and writing a language),
    the math LMs the middle half (computing), as analyses of multilingual LLMs place language in
    the bottom and top layers and shared reasoning in between. Untied, whole-model fine-tunes
    of these tiny models made task vectors that no merge could add (docs/toy_math_zoo.md)."""
    quarter = max(1, num_layers // 4)
    if name == "japanese_lm":
        return list(range(quarter)) + list(range(num_layers - quarter, num_layers)), True
    return list(range(quarter, num_layers - quarter)), False


def freeze_outside(model, trainable: tuple[list[int], bool]) -> None:
    layers, outer = trainable
    for p in model.parameters():
        p.requires_grad_(False)
    for i in layers:
        model.model.layers[i].requires_grad_(True)
    if outer:
        for module in (model.model.embed_tokens, model.model.norm, model.lm_head):
            module.requires_grad_(True)


def train_specialist(name: str, base_dir: Path, out_dir: Path, train: list[D.Problem], cfg: MathZooConfig,
                     tokenizer) -> list[float]:
    """Fine-tune the saved base into one specialist and save it (fp16)."""
    from transformers import MistralForCausalLM

    steps, lr = ((cfg.japanese_steps, cfg.japanese_lr) if name == "japanese_lm" else (cfg.math_steps, cfg.math_lr))
    model = MistralForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    freeze_outside(model, trainable_layers(name, cfg.layers))
    offset = 3 + list(SPECIALTIES).index(name)
    losses = T.train_decoder(model, tokenizer, specialist_corpus(name, train, cfg), steps, lr, cfg.batch,
                             cfg.seed + offset, name)
    _save(model, tokenizer, out_dir)
    return losses


def _save(model, tokenizer, path: Path) -> None:
    """fp16 on disk (the zoo ships in a few MB); every later stage reads these rounded weights."""
    model.to(torch.float16).save_pretrained(path)
    model.to(torch.float32)
    tokenizer.save_pretrained(path)
