"""What a run will need before it runs: genome size, tensors merged, memory and time per candidate.

`evomm plan CONFIG` prints it; `evomm evolve` refuses, with the estimate in one line, a run
whose evaluator cannot fit the device or the host it is given. Everything is read from
configs and safetensors headers: a 7B recipe is estimated in a second, without its weights.

The memory model follows what the evaluators hold (evomm.search.candidates):
- PS: the candidate model in the fitness dtype, plus the merge state per merged element in
  that dtype: base + one task vector per merged model (TIES adds each model's sorted
  magnitudes and int32 keep order; DARE each model's int16 random values; linear keeps the sources, SLERP both
  ends). The state sits with the model on the evaluator's device, or in host RAM with
  `merge_device: cpu` (then the merged tensors also have a host copy).
- DFS: every source in the fitness dtype on the device (any layer may be on the next path).
- Generation: a key/value cache for `batch_size` sequences of prompt + new tokens.
Times are rough (memory bandwidth and FLOPs of the device kind, not measured): merging reads
the state and writes the merged tensors once; generation reads the model once per new token
and spends 2 FLOPs per parameter per prompt token. Measured figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evomm.errors import ConfigError, EvommError

GiB = 1024**3
# effective rates per device kind: (bytes/s of memory traffic, FLOP/s in 16-bit matmuls)
RATES = {"cuda": (1.5e12, 3.0e14), "cpu": (1.5e10, 2.0e11)}
# prompt tokens assumed per question when the fitness generates from images (LLaVA-NeXT tiles
# a 336 image into up to 5 crops of 576 tokens) or from text only
PROMPT_TOKENS = {"vlm": 3000, "text": 256}
_VLM_METRICS = ("vqa_rouge_ja",)


@dataclass
class StageEstimate:
    name: str
    kind: str  # "ps" or "dfs"
    genome: int
    merged_tensors: int = 0
    merged_params: int = 0
    device_bytes: int = 0
    host_bytes: int = 0
    merge_seconds: float = 0.0
    generate_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        return None if self.generate_seconds is None else self.merge_seconds + self.generate_seconds

    def line(self, device: str) -> str:
        time = f"~{self.seconds:.0f} s" if self.seconds is not None else f"merge ~{self.merge_seconds:.2g} s"
        return (f"{self.name} ({self.kind}): genome {self.genome}, {self.merged_tensors} tensors / "
                f"{self.merged_params / 1e9:.2f} B parameters merged; per evaluator {device} "
                f"{self.device_bytes / GiB:.1f} GiB, host {self.host_bytes / GiB:.1f} GiB; {time} per candidate")


def _dtype_size(name: str | None) -> int:
    dtype = getattr(torch, str(name or "float32"), None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"unknown dtype {name!r}")
    return torch.empty((), dtype=dtype).element_size()


def _numel(shape) -> int:
    return math.prod(int(d) for d in shape)


def checkpoint_params(path: str | os.PathLike) -> int:
    """Number of floating-point parameters in a checkpoint (from its headers)."""
    from evomm.io import open_source

    source = open_source(path)
    try:
        return sum(_numel(source.shape(n)) for n in source.keys() if source.dtype(n).is_floating_point)
    finally:
        source.close()


def _decoder_shape(path: str) -> dict[str, int]:
    """Layers, KV heads and head size of a checkpoint's decoder (its config, with defaults)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False).get_text_config(decoder=True)
    except Exception:  # noqa: BLE001 - not a transformers decoder (e.g. an SDXL pipeline)
        return {}
    heads = getattr(config, "num_attention_heads", 0) or 0
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else 0)
    return {"layers": config.num_hidden_layers, "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "head_dim": head_dim}


def _kv_bytes(shape: dict[str, int], layers: int, batch: int, tokens: int, size: int) -> int:
    if not shape:
        return 0
    return batch * tokens * layers * 2 * shape["kv_heads"] * shape["head_dim"] * size


def _state_per_element(method: str, n: int, size: int) -> int:
    """Bytes the PS merge keeps per merged element (see the module docstring)."""
    if method == "linear":
        return n * size
    if method == "slerp":
        return 2 * size
    if method == "ties":  # + sorted magnitudes per model, and mergekit's keep order (int32)
        return (1 + 2 * n) * size + 4 * n
    if method.startswith("dare"):
        return (1 + n) * size + 2 * n
    return (1 + n) * size  # task arithmetic


def estimate_stage(config: Any, stage: Any, sources: dict[str, str]) -> StageEstimate:
    """The estimate of one stage (sources: name -> path, with `stage:X` names resolved)."""
    from evomm.search.stages import build_space

    space = build_space(stage.space, sources, config.seed)
    fit = stage.fitness
    options = dict(fit.options) if fit else {}
    generation = dict(fit.generation) if fit else {}
    size = _dtype_size(options.get("dtype"))
    device_kind = "cuda" if str(config.device).startswith("cuda") else "cpu"
    bandwidth, flops = RATES[device_kind]
    batch = int(generation.get("batch_size", 1))
    new_tokens = int(generation.get("max_new_tokens", 0))
    n_samples = int(fit.n_samples or 0) if fit else 0
    prompt = int(options.get("prompt_tokens", PROMPT_TOKENS["vlm" if fit and fit.metric in _VLM_METRICS else "text"]))
    if stage.space.type == "ps":
        est, model_path = _estimate_ps(stage, space, size, bandwidth, options, device_kind)
        shape = _decoder_shape(model_path)
        layers = shape.get("layers", 0)
        params = checkpoint_params(model_path)
    else:
        models = [str(m) for m in space.sources]
        params_each = [checkpoint_params(m) for m in models]
        est = StageEstimate(stage.name, "dfs", space.dim)
        est.device_bytes = sum(params_each) * size
        est.host_bytes = max(params_each) * size  # loaded one at a time, then moved
        shape = _decoder_shape(models[0])
        layers = int(stage.space.max_length or sum(space.num_layers) * stage.space.repeats)
        # a path of `layers` decoder layers: read them once per new token
        per_layer = (params_each[0] - _embed_params(models[0])) / max(1, shape.get("layers", 1) or 1)
        params = int(per_layer * layers + _embed_params(models[0]))
    kv = _kv_bytes(shape, layers, batch, prompt + new_tokens, size)
    if device_kind == "cuda":
        est.device_bytes += kv
    else:
        est.host_bytes += est.device_bytes + kv
        est.device_bytes = 0
    if n_samples and new_tokens and fit is not None and shape:
        batches = math.ceil(n_samples / batch)
        est.generate_seconds = (batches * new_tokens * params * size / bandwidth
                                + 2 * params * prompt * n_samples / flops)
    elif fit is not None:
        est.notes.append("generation time not estimated for this fitness")
    if not shape:
        est.notes.append("merged model only: text encoders, VAE, scorer and activations not counted")
    return est


def _embed_params(path: str) -> int:
    from evomm.adapters import adapter_for
    from evomm.io import open_source

    source = open_source(path)
    try:
        adapter = adapter_for(source)
        return sum(_numel(source.shape(n)) for n in source.keys()
                   if adapter.slot_of(n).layer is None and adapter.slot_of(n).component == "text")
    finally:
        source.close()


def _estimate_ps(stage: Any, space: Any, size: int, bandwidth: float, options: dict,
                 device_kind: str) -> tuple[StageEstimate, str]:
    """The PS stage's estimate, and the path of its primary model (the one it writes into)."""
    from evomm.merge import methods as M
    from evomm.merge.plan import build_plan, open_models
    from evomm.merge.recipe import Recipe

    recipe = Recipe.from_dict(space.decode(space.initial()), source=f"stage {stage.name}")
    models = open_models(recipe)
    try:
        plan = build_plan(recipe, models)
        merged = [t for t in plan.tasks if t.merge]
        primary = str(plan.primary_input.path)
    finally:
        for model in models.values():
            model.source.close()
    method = recipe.merge_method
    n = len([r for r in recipe.input_models() if not (M.method_spec(method).takes_base(recipe.base_model)
                                                      and r == recipe.base_model)])
    elements = sum((t.rows if t.rows is not None else t.shape[0]) * _numel(t.shape[1:]) if t.shape else 1
                   for t in merged)
    est = StageEstimate(stage.name, "ps", space.dim, len(merged), elements)
    state = elements * _state_per_element(method, n, size)
    model = checkpoint_params(primary) * size
    on_host = str(options.get("merge_device", "")) == "cpu" and device_kind == "cuda"
    est.device_bytes = model + (0 if on_host else state)
    est.host_bytes = model + (state + elements * size if on_host else 0)  # loading peak; shadow copy
    est.merge_seconds = (state + elements * size) / (RATES["cpu"][0] if on_host else bandwidth)
    return est, primary


def estimate_run(config: Any) -> list[StageEstimate]:
    """Estimates for every stage; a later stage's `stage:NAME` model is sized as that stage's
    primary model (a PS result has its primary's shapes)."""
    sources = dict(config.sources)
    out = []
    for stage in config.stages:
        est = estimate_stage(config, stage, sources)
        out.append(est)
        if stage.space.type == "ps":
            keep = stage.space.evomm.get("keep_from")
            sources[f"stage:{stage.name}"] = sources.get(keep, keep) if keep else sources[stage.space.models[0]]
        else:
            sources[f"stage:{stage.name}"] = sources[stage.space.models[0]] if stage.space.models[0] in sources \
                else stage.space.models[0]
    return out


def available_memory(device: str) -> tuple[int | None, int | None]:
    """(device bytes, host bytes) this machine has; None where it cannot tell."""
    host = None
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    gpu = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        gpu = torch.cuda.get_device_properties(index).total_memory
    return gpu, host


def check_fits(config: Any, estimates: list[StageEstimate] | None = None) -> None:
    """Refuse (EvommError, one line) a run whose evaluator would not fit this machine."""
    estimates = estimate_run(config) if estimates is None else estimates
    gpu, host = available_memory(config.device)
    for est in estimates:
        if gpu is not None and est.device_bytes > gpu:
            raise EvommError(f"stage {est.name} needs ~{est.device_bytes / GiB:.1f} GiB on {config.device} per "
                             f"evaluator but it has {gpu / GiB:.1f} GiB ({est.line(config.device)}); lower the "
                             "fitness dtype or batch size, or set fitness.options.merge_device=cpu")
        if host is not None and est.host_bytes > host:
            raise EvommError(f"stage {est.name} needs ~{est.host_bytes / GiB:.1f} GiB of host RAM per evaluator but "
                             f"this machine has {host / GiB:.1f} GiB ({est.line(config.device)})")


def describe(config: Any, estimates: list[StageEstimate]) -> str:
    """The plan as text: one line per stage, then the assumptions."""
    lines = [f"{config.name}: device {config.device}"]
    lines += ["  " + est.line(config.device) + "".join(f" ({note})" for note in est.notes) for est in estimates]
    lines.append("  (estimates from configs and safetensors headers; times from assumed bandwidth and FLOP "
                 "rates of the device kind, not measured)")
    return "\n".join(lines)


def plan_file(path: str | Path, overrides: list[str] | None = None) -> tuple[Any, list[StageEstimate]]:
    from evomm.search.config import load_config

    config = load_config(path, overrides)
    try:
        return config, estimate_run(config)
    except EvommError:
        raise
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot estimate ({exc})") from None
