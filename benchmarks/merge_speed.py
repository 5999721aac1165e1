"""Time `evomm merge` against `mergekit-yaml` on the same YAML, in the same run.

    python benchmarks/merge_speed.py [--size-mb 500] [--methods linear ties] [--repeats 1]

Builds (once, cached under --work) three Mistral-layout checkpoints of about --size-mb each
(a base and two fine-tunes, float32 safetensors), then runs both tools as subprocesses with
one thread each (OMP_NUM_THREADS=1, --num-threads 1) under `/usr/bin/time -v`, and prints the
wall time, the ratio mergekit / evomm, and each tool's peak RSS. Targets: ties >= 3x faster,
linear >= 1.5x, della and model_stock at least as fast; peak RSS no higher than mergekit's.
Outputs are compared to make sure both tools did the same merge (randomised methods differ
by their masks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_checkpoints(work: Path, size_mb: int) -> dict[str, Path]:
    """Base + 2 fine-tunes with a Mistral config sized to about `size_mb` MB (float32)."""
    import torch
    from safetensors.torch import save_file
    from transformers import MistralConfig

    hidden, inter, vocab = 1024, 2816, 32000
    per_layer = hidden * hidden * 2 + hidden * 256 * 2 + 3 * hidden * inter + 2 * hidden
    layers = max(2, round((size_mb * 1e6 / 4 - 2 * vocab * hidden) / per_layer))
    config = MistralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                           num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                           head_dim=128, tie_word_embeddings=False,
                           architectures=["MistralForCausalLM"])
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (256, hidden),
                       p + "self_attn.v_proj.weight": (256, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    paths = {}
    for k, name in enumerate(("base", "ft1", "ft2")):
        path = work / name
        paths[name] = path
        if (path / "model.safetensors").is_file():
            continue
        path.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for j, (tname, shape) in enumerate(shapes.items()):
            base = torch.randn(shape, generator=torch.Generator().manual_seed(j)) * 0.02
            if k:
                base += torch.randn(shape, generator=torch.Generator().manual_seed(1000 * k + j)) * 0.002
            tensors[tname] = base
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        config.to_json_file(str(path / "config.json"))
        del tensors
    return paths


def recipe(method: str, paths: dict[str, Path]) -> str:
    if method == "model_stock":
        models = [{"model": str(paths["ft1"])}, {"model": str(paths["ft2"])}]
        data = {"merge_method": method, "base_model": str(paths["base"]), "models": models, "dtype": "float32"}
        return json.dumps(data)
    if method in ("della", "della_linear"):
        models = [{"model": str(paths[ft]), "parameters": {"weight": w, "density": 0.5, "epsilon": 0.1}}
                  for ft, w in (("ft1", 0.6), ("ft2", 0.4))]
        data = {"merge_method": method, "base_model": str(paths["base"]), "models": models, "dtype": "float32"}
        return json.dumps(data)
    if method == "linear":
        models = [{"model": str(paths["ft1"]), "parameters": {"weight": 0.6}},
                  {"model": str(paths["ft2"]), "parameters": {"weight": 0.4}}]
        data = {"merge_method": "linear", "models": models, "dtype": "float32"}
    else:
        models = [{"model": str(paths["ft1"]), "parameters": {"weight": 0.6, "density": 0.5}},
                  {"model": str(paths["ft2"]), "parameters": {"weight": 0.4, "density": 0.5}}]
        data = {"merge_method": method, "base_model": str(paths["base"]), "models": models, "dtype": "float32"}
    return json.dumps(data)  # JSON is YAML


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one subprocess, measured by /usr/bin/time -v."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return wall, rss_kb / 1024


def max_abs_diff(a: Path, b: Path) -> float:
    from safetensors import safe_open

    worst = 0.0
    with safe_open(str(a / "model.safetensors"), "pt") as fa:
        index = json.loads((b / "model.safetensors.index.json").read_text())["weight_map"] \
            if (b / "model.safetensors.index.json").is_file() else None
        for name in list(fa.keys())[:: max(1, len(fa.keys()) // 12)]:
            file = b / (index[name] if index else "model.safetensors")
            with safe_open(str(file), "pt") as fb:
                worst = max(worst, (fa.get_tensor(name) - fb.get_tensor(name)).abs().max().item())
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "merge_bench")
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--methods", nargs="+", default=["linear", "ties", "della", "model_stock"])
    parser.add_argument("--repeats", type=int, default=1, help="runs per tool; the fastest counts")
    args = parser.parse_args(argv)
    if shutil.which("mergekit-yaml") is None:
        raise SystemExit("mergekit-yaml not found (pip install mergekit==0.1.5)")

    paths = build_checkpoints(args.work, args.size_mb)
    size = sum(f.stat().st_size for f in paths["ft1"].glob("*.safetensors")) / 1e6
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    print(f"checkpoints: 3 x {size:.0f} MB float32 ({args.work}); 1 thread each\n")
    print(f"{'method':<8} {'tool':<9} {'wall s':>8} {'peak RSS MB':>12}")
    rows = []
    for method in args.methods:
        cfg = args.work / f"{method}.yml"
        cfg.write_text(recipe(method, paths))
        best = {}
        for _ in range(args.repeats):
            for tool in ("mergekit", "evomm"):
                out = args.work / f"out_{method}_{tool}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = ([sys.executable, "-m", "evomm.cli", "merge", str(cfg), str(out), "--num-threads", "1",
                        "--no-progress"] if tool == "evomm" else
                       ["mergekit-yaml", str(cfg), str(out), "--no-copy-tokenizer", "--quiet", "--num-threads", "1"])
                wall, rss = timed(cmd, env)
                prev = best.get(tool)
                best[tool] = (min(wall, prev[0]), max(rss, prev[1])) if prev else (wall, rss)
        for tool in ("mergekit", "evomm"):
            print(f"{method:<8} {tool:<9} {best[tool][0]:>8.2f} {best[tool][1]:>12.0f}")
        diff = max_abs_diff(args.work / f"out_{method}_evomm", args.work / f"out_{method}_mergekit")
        ratio = best["mergekit"][0] / best["evomm"][0]
        rows.append((method, ratio, best["evomm"][1] / best["mergekit"][1], diff))
    print()
    targets = {"ties": 3.0, "linear": 1.5, "della": 1.0, "model_stock": 1.0}
    for method, ratio, rss_ratio, diff in rows:
        target = targets.get(method)
        verdict = "" if target is None else (" (target >= %.1fx: %s)" % (target, "met" if ratio >= target else "NOT met"))
        print(f"{method}: evomm is {ratio:.2f}x faster than mergekit{verdict}; peak RSS evomm/mergekit "
              f"= {rss_ratio:.2f} ({'met' if rss_ratio <= 1 else 'NOT met'}); max |diff| on sampled tensors {diff:.2e}"
              + (" (random masks: evomm's are seeded, mergekit's from torch's RNG)" if method.startswith(("della", "dare"))
                 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
