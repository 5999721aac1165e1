"""How fast is one in-memory merge candidate, against one plain fused pass over the weights?

Builds a Mistral-shaped model (~500 MB in float32 by default) and two "fine-tunes" (base +
noise) in memory, then times, in the same run:

- floor: `torch.lerp` of two state dicts into the preallocated model's tensors;
- `CandidateMaterializer.materialize` for linear (of the two fine-tunes), ties and dare_ties
  (base + the two task vectors), with per-layer parameters as the PS genome gives them,
  compiled (one fused pass per tensor) and/or eager (chunked).
  dare_ties is timed both with the search's usual fixed seed (mask bits cached) and with a
  new seed per candidate (mask bits drawn every time).

Targets (issue 4): linear within 2x of the floor, ties and dare_ties within 4x.

    python benchmarks/candidate_speed.py [--threads 1] [--reps 5] [--mode both]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testkit/ (not installed)


def build_models(layers: int, hidden: int, vocab: int, seed: int = 0):
    from testkit.tiny import tiny_mistral_config
    from transformers import MistralForCausalLM

    config = tiny_mistral_config(vocab_size=vocab, num_layers=layers, hidden=hidden)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in MistralForCausalLM(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
    tunes = [{k: v + 0.002 * torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(2)]
    target = MistralForCausalLM(config).eval()  # the one preallocated model candidates are written into
    return base, tunes, target


def paired_times(floor, candidate, reps: int) -> tuple[float, float, float]:
    """Median floor time, median candidate time and median of per-rep ratios.

    Each repetition times the floor right before the candidate, so slow drifts in machine load
    (other jobs on a shared machine) cancel in the ratio.
    """
    floor()
    candidate()  # warm-up: compiles kernels, fills caches
    floors, cands, ratios = [], [], []
    for _ in range(reps):
        start = time.perf_counter()
        floor()
        mid = time.perf_counter()
        candidate()
        end = time.perf_counter()
        floors.append(mid - start)
        cands.append(end - mid)
        ratios.append((end - mid) / (mid - start))
    return statistics.median(floors), statistics.median(cands), statistics.median(ratios)


def layer_params(names, merged, method, rng):
    """Per-tensor parameters: one value per layer (and one for embeddings/head), like the PS genome."""
    from evomm.merge.candidate import TensorParams

    groups: dict[int, list[str]] = {}
    for name in names:
        parts = name.split(".")
        layer = int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else -1
        groups.setdefault(layer, []).append(name)
    out = []
    for layer, tensors in groups.items():
        per_model = {ref: {"weight": float(rng.uniform(0.2, 0.8)), "density": float(rng.uniform(0.2, 0.8))} for ref in merged}
        glob = {"normalize": True} if method == "ties" else {}
        out.append((tensors, TensorParams(per_model, glob)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--mode", choices=["compiled", "eager", "both"], default="both")
    parser.add_argument("--methods", default="linear,ties,dare_ties")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import numpy as np

    from evomm.merge.candidate import CandidateMaterializer, Route, in_place_params

    base, tunes, model = build_models(args.layers, args.hidden, args.vocab)
    target = in_place_params(model)
    names = [k for k in base if k in target]
    numel = sum(base[k].numel() for k in names)
    print(f"model: {len(names)} tensors, {numel / 1e6:.1f} M params, {numel * 4 / 2**20:.0f} MiB float32; "
          f"threads={torch.get_num_threads()}")

    def floor():
        for k in names:
            torch.lerp(tunes[0][k], tunes[1][k], 0.4, out=target[k])

    with torch.no_grad():
        floor()
        start = time.perf_counter()
        floor()
    print(f"floor (torch.lerp of two state dicts into the model): {(time.perf_counter() - start) * 1000:.1f} ms "
          "(re-timed before every candidate below)")

    models = {"base": base, "a": tunes[0], "b": tunes[1]}
    routes = {k: Route({ref: k for ref in models}) for k in names}
    goals = {"linear": 2.0, "ties": 4.0, "dare_ties": 4.0}
    modes = ["compiled", "eager"] if args.mode == "both" else [args.mode]
    rows = []
    for method in args.methods.split(","):
        for mode in modes:
            start = time.perf_counter()
            # linear merges the two fine-tunes (the floor's own inputs); the others are base + 2 task vectors
            merged = ["a", "b"]
            mat = CandidateMaterializer(target, models, routes, method, base="base", merged=merged,
                                        compile=(mode == "compiled"))
            setup_s = time.perf_counter() - start
            rng = np.random.default_rng(0)
            params = layer_params(names, mat.merged, method, rng)
            variants = [("", lambda: mat.materialize(params, seed=1))]
            if method.startswith("dare"):
                seeds = iter(range(2, 10_000))
                variants = [("fixed seed", variants[0][1]), ("new seed", lambda: mat.materialize(params, seed=next(seeds)))]
            for label, fn in variants:
                with torch.no_grad():
                    floor_s, t, ratio = paired_times(floor, fn, args.reps)
                goal = goals.get(method)
                verdict = "" if goal is None else ("meets" if ratio <= goal else "MISSES") + f" {goal:.0f}x target"
                rows.append((f"{method} {label}".strip(), mode, t, ratio, floor_s, verdict))
                print(f"{rows[-1][0]:<22} {mode:<9} {t * 1000:8.1f} ms  floor {floor_s * 1000:6.1f} ms  "
                      f"ratio {ratio:5.2f}x  (setup {setup_s:5.1f} s)  {verdict}", flush=True)
            del mat, params, variants
            gc.collect()

    print(f"\nsummary (median over {args.reps} paired reps of candidate time / floor time)")
    for name, mode, t, ratio, floor_s, verdict in rows:
        print(f"  {name:<22} {mode:<9} {ratio:5.2f}x  ({t * 1000:.0f} ms vs {floor_s * 1000:.0f} ms)  {verdict}")


if __name__ == "__main__":
    main()
