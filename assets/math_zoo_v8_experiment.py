"""Experiment v8 of the toy math zoo (docs/toy_math_zoo.md), not the shipped design.

An English-centric bilingual base (it reads Japanese questions and answers them in English, as
Mistral-7B does), then small whole-model fine-tunes: the Japanese LM learns to answer Japanese
questions in Japanese, the math LMs sharpen their kinds of arithmetic in English.

    python assets/math_zoo_v8_experiment.py OUT_DIR [base_steps=1200] [ja_steps=200] [m_steps=600]
        [ja_lr=3e-4] [m_lr=5e-4] [ja_kinds=add,sub,mul,multi] [reuse_base=ZOO_DIR]
    python assets/probe_math_merges.py --zoo OUT_DIR

v8c (the best variant): ja_steps=60 m_steps=150 over the v8 base (2 threads: base 826 s on a
busy machine, specialists 85 s).
"""
import json, random, shutil, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evomm.zoo_math import data as D
from evomm.zoo_math.build import (MathZooConfig, prompt, arithmetic_fact, tokenizer_corpus, _save, qa_corpus,
                                  SPECIALTIES, TRANSLATE_EN_JA, TRANSLATE_JA_EN)
from evomm.zoo.build import text_config
from evomm.zoo.tokenizer import train_tokenizer
from evomm.zoo import train as T
from transformers import MistralForCausalLM

args = dict(a.split("=") for a in sys.argv[2:])
out = Path(sys.argv[1])
base_steps = int(args.get("base_steps", 1200)); base_lr = float(args.get("base_lr", 3e-3))
ja_steps = int(args.get("ja_steps", 200)); ja_lr = float(args.get("ja_lr", 3e-4))
m_steps = int(args.get("m_steps", 600)); m_lr = float(args.get("m_lr", 5e-4))
facts = int(args.get("facts", 1)); reuse_base = args.get("reuse_base")
torch.set_num_threads(2)
cfg = MathZooConfig()
if out.exists(): shutil.rmtree(out)
(out / "data").mkdir(parents=True)
splits = D.split_problems(cfg.seed, {"train": cfg.train_items, "fitness": cfg.fitness_items, "test": cfg.test_items})
for name in ("fitness", "test"):
    D.write_split(out / "data" / f"{name}.jsonl", splits[name], "ja")
train = splits["train"]
rng = random.Random(cfg.seed)
t0 = time.time()
if reuse_base:
    shutil.copytree(Path(reuse_base) / "base", out / "base")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out / "base")
else:
    tok = train_tokenizer(tokenizer_corpus(train), cfg.vocab_size, split_digits=True)
    corpus = []
    for p in train:
        (eq, ea), (jq, ja) = p.text("en"), p.text("ja")
        corpus += [T.Example(prompt(eq), ea), T.Example(prompt(jq), ea)]
        if rng.random() < 0.5:
            corpus.append(T.Example(prompt(f"{TRANSLATE_EN_JA} {eq}"), jq))
            corpus.append(T.Example(prompt(f"{TRANSLATE_EN_JA} {ea}"), ja))
        else:
            corpus.append(T.Example(prompt(f"{TRANSLATE_JA_EN} {jq}"), eq))
            corpus.append(T.Example(prompt(f"{TRANSLATE_JA_EN} {ja}"), ea))
        for _ in range(facts):
            corpus.append(T.Example("", arithmetic_fact(rng)))
    torch.manual_seed(cfg.seed + 1)
    base = MistralForCausalLM(text_config(cfg, len(tok)))
    T.train_decoder(base, tok, corpus, base_steps, base_lr, cfg.batch, cfg.seed + 2, "base")
    _save(base, tok, out / "base")
    print("base", f"{time.time()-t0:.0f}s", flush=True)
for i, name in enumerate(["japanese_lm", "math_a", "math_b"]):
    t1 = time.time()
    model = MistralForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
    lang, kinds = SPECIALTIES[name]
    if name == "japanese_lm" and args.get("ja_kinds"):
        kinds = tuple(args["ja_kinds"].split(","))
    steps, lr = (ja_steps, ja_lr) if name == "japanese_lm" else (m_steps, m_lr)
    losses = T.train_decoder(model, tok, qa_corpus(train, lang, kinds), steps, lr, cfg.batch, cfg.seed + 3 + i, name)
    _save(model, tok, out / name)
    print(name, f"loss {sum(losses[-30:])/30:.3f}", f"{time.time()-t1:.0f}s", flush=True)
