"""Real-size candidate costs on one GPU: PS merge, DFS re-route and generation, SDXL UNet merge.

For a machine with a GPU (never needed by the tests). Models are random-initialised at the
real shapes (Mistral-7B, the SDXL UNet) in their 16-bit dtypes; sources are made on demand,
tensor by tensor, from a seed, so only what an evaluator really keeps occupies the GPU.
Measured in the same run:

- PS (DARE-TIES over a base and two fine-tunes, a weight and a density per layer, state in
  bf16 on the GPU): time per candidate against a fused bf16 lerp pass over the same tensors
  (target: <= 3x), and peak memory against model + merge state (+ nothing per candidate);
- DFS: re-routing a 64-layer path through two 7B decoders, and greedy generation throughput
  for one fitness batch (`--batch` sequences of `--prompt` + `--new` tokens), with peak
  memory against both sources + the KV cache;
- SDXL: a task-arithmetic candidate of 4 UNets over the base (fp16) against the lerp floor.

    python benchmarks/gpu_candidate.py                     # real sizes, cuda
    python benchmarks/gpu_candidate.py --scale tiny --device cpu   # a smoke run anywhere
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testkit/ (not installed)

GiB = 1024**3


class SeededTensors(Mapping):
    """name -> tensor made on access from (seed, name): a source that occupies no memory."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int, device, dtype, base: "SeededTensors | None" = None,
                 drift: float = 0.002):
        self.shapes, self.seed, self.device, self.dtype, self.base, self.drift = shapes, seed, device, dtype, base, drift

    def __getitem__(self, name: str) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        noise = torch.randn(self.shapes[name], generator=gen, device=self.device, dtype=torch.float32)
        if self.base is None:
            return (noise * 0.02).to(self.dtype)
        return (self.base[name].float() + self.drift * noise).to(self.dtype)

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def mistral_config(scale: str):
    from transformers import MistralConfig

    if scale == "7b":  # Mistral-7B-v0.1
        return MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                             rope_theta=1e4, sliding_window=4096, tie_word_embeddings=False)
    return MistralConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False)


def sdxl_config(scale: str) -> dict:
    if scale == "7b":
        return dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, addition_embed_type="text_time",
                    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, use_linear_projection=True,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    from testkit.tiny import tiny_sdxl_unet_config

    return tiny_sdxl_unet_config()


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps: int) -> float:
    fn()  # warm-up (compiles kernels)
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak(device) -> float | None:
    return torch.cuda.max_memory_allocated() / GiB if torch.device(device).type == "cuda" else None


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def ps_candidate(model: torch.nn.Module, method: str, n_models: int, dtype, device, reps: int, layer_of) -> dict:
    """Time one in-memory candidate of `method` over seeded sources written into `model`."""
    from evomm.merge.candidate import CandidateMaterializer, Route, TensorParams

    target = {n: p.data for n, p in model.named_parameters() if p.is_floating_point()}
    shapes = {n: tuple(t.shape) for n, t in target.items()}
    base = SeededTensors(shapes, 0, device, dtype)
    models = {"base": base, **{f"m{i}": SeededTensors(shapes, i + 1, device, dtype, base) for i in range(n_models)}}
    routes = {n: Route({ref: n for ref in models}) for n in target}
    reset_peak(device)
    start = time.perf_counter()
    mat = CandidateMaterializer(target, models, routes, method, base="base", storage_dtype=dtype,
                                compile=None if torch.device(device).type == "cuda" else False)
    sync(device)
    setup = time.perf_counter() - start

    def params():  # a weight (and density) per layer and model, as the PS genome gives them
        values = {}
        for name in target:
            rnd = torch.rand(2 * n_models, generator=torch.Generator().manual_seed(layer_of(name) + 1000))
            values[name] = TensorParams({f"m{i}": {"weight": 0.3 + float(rnd[i]),
                                                   "density": 0.2 + 0.7 * float(rnd[n_models + i])}
                                         for i in range(n_models)}, {})
        return values

    candidate_params = params()
    slots = list(mat._slots.values())

    def floor():  # one fused 16-bit lerp of two kept tensors into each target
        for slot in slots:
            torch.lerp(slot.base, slot.inputs[0], 0.5, out=slot.target) if slot.target.dtype == slot.base.dtype else \
                slot.target.copy_(torch.lerp(slot.base, slot.inputs[0], 0.5))

    t_floor = timed(floor, device, reps)
    t_cand = timed(lambda: mat.materialize(candidate_params, seed=0), device, reps)
    state = sum(t.numel() * t.element_size() for s in slots for t in (s.base, *s.inputs, *(s.bits or []),
                                                                        *s.sorted_abs))
    model_bytes = sum(t.numel() * t.element_size() for t in target.values())
    return {"setup_s": setup, "floor_s": t_floor, "candidate_s": t_cand, "ratio": t_cand / t_floor,
            "state_gib": state / GiB, "model_gib": model_bytes / GiB, "peak_gib": peak(device),
            "compiled": mat._compile is not False}


def bench_ps(args) -> dict:
    from transformers import MistralForCausalLM

    config = mistral_config(args.scale)
    with torch.device(args.device):
        model = MistralForCausalLM(config).to(torch.bfloat16).eval()

    def layer_of(name: str) -> int:
        parts = name.split(".")
        return int(parts[parts.index("layers") + 1]) if "layers" in parts else -1

    out = ps_candidate(model, "dare_ties", 2, torch.bfloat16, args.device, args.reps, layer_of)
    out["target_ratio"] = 3.0
    del model
    return out


def bench_dfs(args) -> dict:
    from transformers import MistralForCausalLM

    from evomm.models.dfs import DFSForCausalLM

    config = mistral_config(args.scale)
    reset_peak(args.device)
    with torch.device(args.device):
        sources = [MistralForCausalLM(config).to(torch.bfloat16).eval() for _ in range(2)]
    n = config.num_hidden_layers
    length = min(64, 2 * n * 3)
    path_a = [[i % 2, (i // 2) % n] for i in range(length)]
    path_b = [[(i + 1) % 2, (i * 3) % n] for i in range(length)]
    dfs = DFSForCausalLM.from_sources(sources, path_a)
    flip = iter(range(10**9))
    reroute = timed(lambda: dfs.set_path(path_b if next(flip) % 2 else path_a), args.device, args.reps)
    ids = torch.randint(3, config.vocab_size, (args.batch, args.prompt), device=args.device)
    with torch.no_grad():
        generate = timed(lambda: dfs.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=0,
                                              max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False),
                         args.device, max(1, args.reps // 2))
    weights = sum(p.numel() * p.element_size() for m in sources for p in m.parameters())
    kv = args.batch * (args.prompt + args.new) * length * 2 * config.num_key_value_heads * \
        (config.hidden_size // config.num_attention_heads) * 2
    return {"path_length": length, "reroute_s": reroute, "generate_s": generate,
            "new_tokens_per_s": args.batch * args.new / generate, "sources_gib": weights / GiB,
            "kv_cache_gib": kv / GiB, "peak_gib": peak(args.device),
            "target_peak_gib": (weights + kv) / GiB}


def bench_sdxl(args) -> dict:
    from diffusers import UNet2DConditionModel

    with torch.device(args.device):
        unet = UNet2DConditionModel(**sdxl_config(args.scale)).to(torch.float16).eval()

    def block_of(name: str) -> int:
        return zlib.crc32(name.split(".")[0].encode()) % 20

    out = ps_candidate(unet, "task_arithmetic", 4, torch.float16, args.device, args.reps, block_of)
    del unet
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--prompt", type=int, default=600)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--only", choices=["ps", "dfs", "sdxl"], action="append")
    args = parser.parse_args()
    if args.scale == "tiny":
        args.batch, args.prompt, args.new = min(args.batch, 2), min(args.prompt, 16), min(args.new, 4)
    name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}, scale {args.scale}")
    for part, fn in (("ps", bench_ps), ("dfs", bench_dfs), ("sdxl", bench_sdxl)):
        if args.only and part not in args.only:
            continue
        result = fn(args)
        print(json.dumps({"part": part, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}}))


if __name__ == "__main__":
    main()
