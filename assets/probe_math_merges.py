"""Probe the toy math zoo: its sources, uniform task-arithmetic merges and hand-made DFS paths.

    python assets/probe_math_merges.py [--zoo assets/math_zoo] [--n 200] [--num-threads 2] [--no-dfs]

Scores every model on the first N held-out Japanese test problems (acc / acc_ja %, and per
kind) and prints a few answers. The numbers in docs/toy_math_zoo.md come from here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UNIFORM = [(1, 1, 1), (1, .5, .5), (1, .75, .75), (.75, .5, .5), (1, 1, .5), (1, .5, 1), (1.25, .75, .75)]


def line(name: str, scores: dict, seconds: float) -> str:
    kinds = " ".join(f"{k} {v['acc']:.0f}/{v['acc_ja']:.0f}" for k, v in scores["by_kind"].items())
    return f"{name:30s} acc {scores['acc']:5.1f} acc_ja {scores['acc_ja']:5.1f} | {kinds} ({seconds:.1f}s)"


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer, MistralForCausalLM

    from evomm.models.dfs import DFSForCausalLM
    from evomm.zoo_math.evaluate import evaluate_model, read_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "assets" / "math_zoo")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--no-dfs", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    rows = read_split(args.zoo / "data" / "test.jsonl")[: args.n]
    tokenizer = AutoTokenizer.from_pretrained(args.zoo / "base")
    names = ("base", "japanese_lm", "math_a", "math_b")
    models = {n: MistralForCausalLM.from_pretrained(args.zoo / n, dtype=torch.float32).eval() for n in names}

    def show(name: str, model, examples: int = 0) -> None:
        start = time.perf_counter()
        scores, answers = evaluate_model(model, tokenizer, rows)
        print(line(name, scores, time.perf_counter() - start), flush=True)
        for i in range(examples):
            print(f"    {rows[i]['kind']:5s} {rows[i]['question'][:36]} -> {answers[i][:70]}")

    for name, model in models.items():
        show(name, model, examples=4)
    base = models["base"].state_dict()
    deltas = {n: {k: v - base[k] for k, v in models[n].state_dict().items()} for n in names[1:]}
    merged = MistralForCausalLM.from_pretrained(args.zoo / "base", dtype=torch.float32).eval()
    for wj, wa, wb in UNIFORM:
        merged.load_state_dict({k: base[k] + wj * deltas["japanese_lm"][k] + wa * deltas["math_a"][k]
                                + wb * deltas["math_b"][k] for k in base})
        show(f"uniform ja={wj} a={wa} b={wb}", merged)
    if args.no_dfs:
        return 0
    depth = models["japanese_lm"].config.num_hidden_layers
    q = max(1, depth // 4)
    for other in ("math_a", "math_b"):
        dfs = DFSForCausalLM.from_sources([models["japanese_lm"], models[other]], [[0, 0]]).eval()
        ja = lambda a, b: [[0, layer] for layer in range(a, b)]  # noqa: E731
        ma = lambda a, b: [[1, layer] for layer in range(a, b)]  # noqa: E731
        paths = {
            "ja": ja(0, depth), other: ma(0, depth),
            f"ja outer, {other} middle": ja(0, q) + ma(q, depth - q) + ja(depth - q, depth),
            f"ja, then {other} middle": ja(0, depth - q) + ma(q, depth - q) + ja(depth - q, depth),
            f"ja all, {other} middle after": ja(0, depth) + ma(q, depth - q) + ja(depth - q, depth),
        }
        for name, path in paths.items():
            dfs.set_path(path)
            show(f"DFS {name}", dfs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
