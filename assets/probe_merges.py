"""Probe whether the toy zoo is mergeable: parents vs uniform and per-layer task arithmetic.

    python assets/probe_merges.py [--zoo assets/zoo] [--split test] [--sweeps 3] [--budget 60]

Evaluates on the Japanese questions of a held-out split:
- the English VLM (image + Japanese question) and the Japanese LM (question only);
- the base decoder behind the VLM's vision tower and projector (for reference);
- task-arithmetic merges of the decoder, theta = base + a * (vlm - base) + b * (ja - base),
  with (a, b) uniform over a small grid, two hand-made per-layer profiles, and a greedy
  per-layer search (steps of +-0.25 on each slot's a and b, starting from the best uniform
  merge) scored by ROUGE-L on the *fitness* split, whose result is then reported on the test
  split (a poor man's evolution; the real one is `evomm evolve`).
The vision tower and projector always come from the English VLM. Merges are plain tensor
arithmetic in memory. Prints key-word accuracy per question type and Japanese ROUGE-L.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evomm.zoo import data as D  # noqa: E402
from evomm.zoo.evaluate import answer_with_lm, answer_with_vlm, load_split, score_answers  # noqa: E402

LAYER = re.compile(r"layers\.(\d+)\.")


def decoder_state(model) -> dict[str, torch.Tensor]:
    """Decoder tensors under plain-LM names (model.X / lm_head.weight) for LLaVA or Mistral."""
    if hasattr(model.model, "language_model"):
        lm = model.model.language_model.state_dict()
        out = {f"model.{k}": v for k, v in lm.items()}
    else:
        out = {f"model.{k}": v for k, v in model.model.state_dict().items()}
    out["lm_head.weight"] = model.lm_head.weight.detach()
    return {k: v.detach().clone().float() for k, v in out.items()}


def layer_of(name: str, num_layers: int) -> int:
    """Slot of a tensor for per-layer weights: embeddings -> 0, layers -> 1..L, head/norm -> L+1."""
    match = LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if "embed_tokens" in name else num_layers + 1


def task_arithmetic(base, vlm, ja, a: list[float], b: list[float], num_layers: int):
    """base + a[slot] * (vlm - base) + b[slot] * (ja - base), per tensor slot."""
    out = {}
    for name, theta in base.items():
        slot = layer_of(name, num_layers)
        out[name] = theta + a[slot] * (vlm[name] - theta) + b[slot] * (ja[name] - theta)
    return out


def ties_merge(base, vlm, ja, a: float, b: float, density: float):
    """Uniform TIES via the library (evomm.merge.methods.ties, unnormalised)."""
    from evomm.merge.methods import ties

    return {name: ties(theta, [vlm[name], ja[name]], [a, b], [density, density], normalize=False)
            for name, theta in base.items()}


def load_decoder_into(vlm_model, state: dict[str, torch.Tensor]) -> None:
    lm = vlm_model.model.language_model
    lm.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    vlm_model.lm_head.weight.data.copy_(state["lm_head.weight"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=str(REPO / "assets" / "zoo"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--sweeps", type=int, default=3, help="sweeps of the per-layer greedy search")
    parser.add_argument("--budget", type=int, default=60, help="most merges the search may evaluate")
    parser.add_argument("--ties", action="store_true", help="also try uniform TIES merges (evomm.merge.methods)")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--json", default="", help="write all results here")
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration, MistralForCausalLM

    zoo = Path(args.zoo)
    vlm = LlavaForConditionalGeneration.from_pretrained(zoo / "english_vlm").eval()
    processor = AutoProcessor.from_pretrained(zoo / "english_vlm")
    ja_model = MistralForCausalLM.from_pretrained(zoo / "japanese_lm").eval()
    ja_tok = AutoTokenizer.from_pretrained(zoo / "japanese_lm")
    base_model = MistralForCausalLM.from_pretrained(zoo / "base").eval()
    num_layers = base_model.config.num_hidden_layers
    base, vlm_dec, ja_dec = decoder_state(base_model), decoder_state(vlm), decoder_state(ja_model)
    test = load_split(zoo / "data", args.split, "ja")
    fitness = load_split(zoo / "data", "fitness", "ja")
    results: dict[str, dict] = {}
    slots = num_layers + 2

    def evaluate_merge(name, a, b, records=test, show=True):
        load_decoder_into(vlm, task_arithmetic(base, vlm_dec, ja_dec, a, b, num_layers))
        res = score_answers(records, answer_with_vlm(vlm, processor, records))
        if show:
            report(name, res)
            results[name] = {**res, "a": a, "b": b}
        return res

    def report(name, res):
        types = " ".join(f"{t}={v:5.1f}" for t, v in res["by_type"].items())
        print(f"{name:28s} kw={res['keyword_acc']:5.1f} rougeL={res['rougeL']:5.1f} | {types}", flush=True)

    start = time.perf_counter()
    chance = " ".join(f"{t}={D.chance_level(t):5.1f}" for t in D.QUESTION_TYPES)
    print(f"{'chance':28s} {chance}")
    answers = answer_with_vlm(vlm, processor, test)
    results["english_vlm"] = score_answers(test, answers)
    report("english_vlm", results["english_vlm"])
    results["japanese_lm"] = score_answers(test, answer_with_lm(ja_model, ja_tok, test))
    report("japanese_lm (text only)", results["japanese_lm"])
    evaluate_merge("base + vlm vision", [0.0] * slots, [0.0] * slots)
    for a in (0.5, 1.0):
        for b in (0.5, 1.0, 1.5):
            evaluate_merge(f"uniform TA a={a} b={b}", [a] * slots, [b] * slots)
    if args.ties:
        for a, b, density in ((0.5, 1.0, 0.5), (0.5, 1.0, 0.8), (1.0, 1.0, 0.5)):
            load_decoder_into(vlm, ties_merge(base, vlm_dec, ja_dec, a, b, density))
            res = score_answers(test, answer_with_vlm(vlm, processor, test))
            report(f"TIES a={a} b={b} d={density}", res)
            results[f"TIES a={a} b={b} d={density}"] = res
    uniform = {k: v for k, v in results.items() if k.startswith("uniform")}
    best_uniform = max(uniform, key=lambda k: uniform[k]["rougeL"])
    print(f"best uniform by ROUGE-L: {best_uniform}")
    ramp = [i / (slots - 1) for i in range(slots)]
    evaluate_merge("per-layer vlm early, ja late", [1 - r * 0.5 for r in ramp], [0.5 + r for r in ramp])
    evaluate_merge("per-layer ja early, vlm late", [0.5 + r * 0.5 for r in ramp], [1.5 - r for r in ramp])

    # a greedy per-layer search on the fitness split, from the best uniform point: a stand-in
    # for the CMA-ES search of `evomm evolve`, to see whether per-layer weights help at all
    a, b = list(results[best_uniform]["a"]), list(results[best_uniform]["b"])
    best_fit = evaluate_merge("search start", a, b, records=fitness, show=False)["rougeL"]
    evaluations = 0
    for sweep in range(args.sweeps):
        improved = False
        for slot in range(slots):
            for vector, step in ((a, 0.25), (a, -0.25), (b, 0.25), (b, -0.25)):
                if evaluations >= args.budget:
                    break
                vector[slot] += step
                fit = evaluate_merge("search", a, b, records=fitness, show=False)["rougeL"]
                evaluations += 1
                if fit > best_fit + 0.05:
                    best_fit, improved = fit, True
                else:
                    vector[slot] -= step
        print(f"sweep {sweep}: fitness ROUGE-L {best_fit:.1f} a={a} b={b} ({evaluations} evaluations)", flush=True)
        if not improved:
            break
    evaluate_merge("per-layer greedy search", a, b)
    print(f"probe took {time.perf_counter() - start:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
