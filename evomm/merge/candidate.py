"""Materialise merge candidates in memory, thousands of times, into one preallocated model.

The evolutionary search scores many recipes over the same source models. Re-reading
checkpoints, re-instantiating the model or recomputing what does not depend on the
candidate would dominate its time, so `CandidateMaterializer`:

- loads the sources once (float32) and keeps, per merged tensor, what the method needs:
  the source tensors (linear), the base and the task vectors `x_i - base` (task arithmetic,
  TIES, DARE), both endpoints with their norms and dot product (SLERP);
- precomputes per tensor what no candidate changes: the sorted magnitudes of every task
  vector, so a TIES density becomes a threshold lookup instead of a k-th value search;
  and, per DARE seed, the random bits of the drop masks (candidates of one search usually
  share the seed, so their masks differ only through the density);
- writes each candidate into the target tensors in place (`copy_` under `torch.no_grad()`):
  no model re-instantiation, no disk writes. Tensors that are not merged, and the rows of a
  vocabulary-sized tensor beyond those shared by all sources, are copied once at setup;
- runs each method as one fused pass per tensor (`torch.compile`, when it works on this
  machine), else as the same arithmetic in eager mode over cache-sized chunks.

Results equal `evomm.merge.methods` on the same parameters (tests/test_candidate.py), with
one convention to share with `evomm merge`: DARE masks of tensor `name` use the seed
`methods.tensor_seed(seed, name)`, where `name` is the target (output) tensor name.

The API works on plain mappings of tensors: the target (e.g. `dict(model.named_parameters())`),
the sources keyed by model reference, and a `Route` per target tensor naming its source
tensors. `routes_from_tasks` turns the merge planner's tasks into routes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from evomm.errors import ConfigError, MissingTensorError, ShapeMismatchError
from evomm.merge import methods as M

log = logging.getLogger(__name__)

#: Elements per chunk in eager mode: a few float32 scratch tensors of this size fit in L2.
DEFAULT_CHUNK = 1 << 15


@dataclass(frozen=True)
class Route:
    """Where target tensor comes from.

    `inputs` maps a model reference to that model's name for the tensor. With `merge=False`
    the tensor is copied unchanged from `keep_from` (or the only input). With `rows`, only
    the leading `rows` rows are merged (a vocabulary shared by all sources); the other rows
    are copied from `keep_from`.
    """

    inputs: Mapping[str, str]
    merge: bool = True
    rows: int | None = None
    keep_from: str | None = None


@dataclass(frozen=True)
class TensorParams:
    """One tensor's resolved method parameters, as the planner's `resolve_parameters` gives them.

    `per_model[ref][param]` (e.g. weight, density) and `global_[param]` (e.g. lambda, t).
    Any object with these two attributes is accepted in its place.
    """

    per_model: Mapping[str, Mapping[str, Any]]
    global_: Mapping[str, Any] = field(default_factory=dict)


def routes_from_tasks(tasks: Iterable[Any], primary: str) -> dict[str, Route]:
    """Routes from the merge planner's tasks (objects with name, merge, inputs, rows)."""
    routes = {}
    for task in tasks:
        inputs = dict(task.inputs) if task.merge else {primary: task.name}
        routes[task.name] = Route(inputs, merge=task.merge, rows=task.rows, keep_from=primary)
    return routes


# ----------------------------------------------------------------------------- kernels
# One function per method family, written once with torch ops: compiled, each is a single
# fused pass over a tensor; in eager mode it runs over chunks small enough to stay in cache.
# Scalars arrive as tensors so that compiled kernels are not re-specialised per candidate.


def _weighted_sum(xs: list[Tensor], weights: Tensor) -> Tensor:
    total = xs[0] * weights[0]
    for i in range(1, len(xs)):
        total = total + xs[i] * weights[i]
    return total


def _linear_kernel(out: Tensor, sources: list[Tensor], weights: Tensor, divisor: Tensor) -> None:
    out.copy_(_weighted_sum(sources, weights) / divisor)


def _sum_kernel(out: Tensor, base: Tensor, deltas: list[Tensor], weights: Tensor, divisor: Tensor, lam: Tensor) -> None:
    out.copy_(base + _weighted_sum(deltas, weights) / divisor * lam)


def _elect(out: Tensor, base: Tensor, xs: list[Tensor], weights: Tensor, lam: Tensor, normalize: bool) -> None:
    """TIES's sign election over weighted, sparsified task vectors `xs`."""
    total = xs[0]
    for i in range(1, len(xs)):
        total = total + xs[i]
    positive = total >= 0
    mixed = None
    divisor = None
    for i, x in enumerate(xs):
        agree = torch.where(positive, x > 0, x < 0)
        term = torch.where(agree, x, 0.0)
        mixed = term if mixed is None else mixed + term
        if normalize:
            w = torch.where(agree, weights[i], 0.0)
            divisor = w if divisor is None else divisor + w
    if normalize:
        mixed = mixed / torch.where(divisor == 0, 1.0, divisor)
    out.copy_(base + mixed * lam)


def _ties_kernel(
    out: Tensor, base: Tensor, deltas: list[Tensor], thresholds: Tensor, weights: Tensor, lam: Tensor, normalize: bool
) -> None:
    xs = [torch.where(d.abs() >= thresholds[i], d, 0.0) * weights[i] for i, d in enumerate(deltas)]
    _elect(out, base, xs, weights, lam, normalize)


def _dare_kernel(
    out: Tensor,
    base: Tensor,
    deltas: list[Tensor],
    bits: list[Tensor],
    keep_below: Tensor,
    rescale: Tensor,
    weights: Tensor,
    divisor: Tensor,
    lam: Tensor,
    normalize: bool,
    consensus: bool,
) -> None:
    xs = [torch.where(b < keep_below[i], d / rescale[i], 0.0) * weights[i] for i, (d, b) in enumerate(zip(deltas, bits))]
    if consensus:
        _elect(out, base, xs, weights, lam, normalize)
    else:
        total = xs[0]
        for i in range(1, len(xs)):
            total = total + xs[i]
        out.copy_(base + total / divisor * lam)


def _slerp_kernel(out: Tensor, a: Tensor, b: Tensor, c_a: Tensor, c_b: Tensor) -> None:
    out.copy_(a * c_a + b * c_b)


_KERNELS: dict[str, Callable[..., None]] = {
    "linear": _linear_kernel,
    "sum": _sum_kernel,
    "ties": _ties_kernel,
    "dare": _dare_kernel,
    "slerp": _slerp_kernel,
}
_COMPILED: dict[str, Callable[..., None]] = {}


def _compiled(kind: str) -> Callable[..., None]:
    if kind not in _COMPILED:
        _COMPILED[kind] = torch.compile(_KERNELS[kind], dynamic=True, fullgraph=True)
    return _COMPILED[kind]


def _run_chunked(kernel: Callable[..., None], chunk: int, out: Tensor, tensors: Sequence[Any], rest: Sequence[Any]) -> None:
    """Run `kernel(out, *tensors, *rest)` chunk by chunk; `tensors` are flat tensors or lists of them."""
    numel = out.shape[-1]
    for start in range(0, numel, chunk):
        stop = min(numel, start + chunk)
        pieces = [[x[start:stop] for x in t] if isinstance(t, list) else t[start:stop] for t in tensors]
        kernel(out[start:stop], *pieces, *rest)


# ----------------------------------------------------------------------------- per-tensor state


@dataclass
class _Merged:
    """What one merged target tensor keeps between candidates (flat float32 tensors)."""

    name: str
    target: Tensor  # the region written per candidate (leading rows of the target), flat
    numel: int
    base: Tensor | None = None  # (N,)
    inputs: list[Tensor] = field(default_factory=list)  # per merged model: source (linear) or task vector
    sorted_abs: list[Tensor] = field(default_factory=list)  # per merged model: ascending |task vector| (TIES)
    slerp_stats: tuple[float, float, float] | None = None  # |a|, |b|, cos(a, b)
    bits_seed: int | None = None
    bits: list[Tensor] | None = None  # per merged model: DARE random values for `bits_seed`


class CandidateMaterializer:
    """Writes merge candidates of one method over fixed sources into preallocated tensors.

    target:   name -> tensor to write (e.g. `dict(model.named_parameters())`); float32 best,
              other float dtypes are cast on write.
    models:   model reference -> (name -> tensor); read once here, in merge order.
    routes:   target name -> `Route`; targets without a route are left alone.
    method:   a name in `evomm.merge.methods.METHODS`.
    base:     the base model's reference (methods that need one; SLERP's t=0 end).
    compile:  fuse each method into one pass with `torch.compile` (None: try, fall back to
              eager if compiling fails here).
    """

    def __init__(
        self,
        target: Mapping[str, Tensor],
        models: Mapping[str, Mapping[str, Tensor]],
        routes: Mapping[str, Route],
        method: str,
        base: str | None = None,
        *,
        merged: Sequence[str] | None = None,
        compile: bool | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        cache_dare_bits: bool = True,
        progress: bool = False,
    ):
        self.spec = M.method_spec(method)
        self.method = method
        if self.spec.needs_base and base is None:
            raise ConfigError(f"{method}: needs a base model")
        if base is not None and base not in models:
            raise ConfigError(f"base model {base!r} is not one of the sources ({', '.join(models)})")
        self.base = base
        if merged is None:
            merged = [ref for ref in models if not (self.spec.needs_base and ref == base)]
        self.merged = list(merged)
        missing = [ref for ref in self.merged if ref not in models]
        if missing:
            raise ConfigError(f"merged model(s) {missing} are not among the sources")
        n, lo, hi = len(self.merged), self.spec.min_models, self.spec.max_models
        if n < lo or (hi is not None and n > hi):
            raise ConfigError(f"{method}: cannot merge {n} model(s) besides the base")
        self.chunk_size = int(chunk_size)
        self.cache_dare_bits = cache_dare_bits
        self._compile = compile
        self._slots: dict[str, _Merged] = {}
        self._scratch: dict[str, Tensor] = {}
        self._setup(target, models, routes, progress)

    # ------------------------------------------------------------------ setup

    def _setup(self, target, models, routes, progress: bool) -> None:
        from tqdm.auto import tqdm

        items = [(name, route) for name, route in routes.items()]
        for name, route in tqdm(items, desc="preparing sources", disable=not progress, unit="tensor"):
            if name not in target:
                raise MissingTensorError(f"target has no tensor {name!r}")
            out = target[name]
            with torch.no_grad():
                if not route.merge:
                    ref = route.keep_from or next(iter(route.inputs))
                    out.copy_(_fetch(models, ref, route.inputs.get(ref, name), out.shape))
                    continue
                rows = route.rows
                region = out if rows is None else out[:rows]
                if rows is not None and rows < out.shape[0]:
                    ref = route.keep_from
                    if ref is None:
                        raise ConfigError(f"{name}: merging {rows} leading rows needs `keep_from` for the rest")
                    src = _fetch(models, ref, route.inputs.get(ref, name), None)
                    out[rows:].copy_(src[rows: out.shape[0]])
                self._slots[name] = self._prepare(name, region, models, route)

    def _prepare(self, name: str, region: Tensor, models, route: Route) -> _Merged:
        shape = tuple(region.shape)
        rows = shape[0] if route.rows is not None else None

        def load(ref: str) -> Tensor:
            if ref not in route.inputs:
                raise MissingTensorError(f"{name}: no source tensor given for model {ref!r}")
            t = _fetch(models, ref, route.inputs[ref], None)
            if rows is not None:
                t = t[:rows]
            if tuple(t.shape) != shape:
                raise ShapeMismatchError(f"{name}: {ref} has shape {list(t.shape)}, the target {list(shape)}")
            return t.detach().to(device=region.device, dtype=torch.float32).reshape(-1)

        flat = region.reshape(-1) if region.is_contiguous() else None
        if flat is None or flat.data_ptr() != region.data_ptr():
            raise ConfigError(f"{name}: target tensors must be contiguous")
        slot = _Merged(name, flat, flat.numel())
        kind = self.method
        if kind == "linear":
            slot.inputs = [load(ref).clone() for ref in self.merged]
        elif kind == "slerp":
            a, b = load(self.base), load(self.merged[0])
            slot.base, slot.inputs = a.clone(), [b.clone()]
            slot.slerp_stats = M.slerp_stats(a, b)
        else:
            base = load(self.base).clone()
            slot.base = base
            slot.inputs = [load(ref) - base for ref in self.merged]
            if kind == "ties":
                slot.sorted_abs = [_sorted_magnitudes(d) for d in slot.inputs]
        return slot

    @property
    def merged_names(self) -> list[str]:
        return list(self._slots)

    # ------------------------------------------------------------------ candidates

    def materialize(self, params: Mapping[str, Any] | Sequence[tuple[Sequence[str], Any]], seed: int = 0) -> None:
        """Write one candidate into the target tensors.

        `params`: target name -> its resolved parameters (`TensorParams` or the planner's
        `ResolvedParameters`), or a list of (target names, parameters) groups whose tensors
        share them. Every merged target must get parameters. `seed` drives DARE's masks.
        """
        groups = params if not isinstance(params, Mapping) else [((name,), p) for name, p in params.items()]
        done = 0
        with torch.no_grad():
            for names, p in groups:
                kwargs = self._bind(p)
                for name in names:
                    slot = self._slots.get(name)
                    if slot is None:
                        raise ConfigError(f"{name!r} is not a merged tensor of this candidate space")
                    self._write(slot, kwargs, seed)
                    done += 1
        if done != len(self._slots):
            given = {n for names, _ in groups for n in names}
            missing = [n for n in self._slots if n not in given]
            raise ConfigError(f"candidate has no parameters for {len(missing)} merged tensor(s), e.g. {missing[0]!r}")

    def _bind(self, p: Any) -> dict[str, Any]:
        per_model_src = p["per_model"] if isinstance(p, Mapping) else p.per_model
        global_ = p.get("global_", p.get("global", {})) if isinstance(p, Mapping) else p.global_
        per_model: dict[str, list[Any]] = {}
        for name in self.spec.per_model_params:
            values = [per_model_src.get(ref, {}).get(name) for ref in self.merged]
            if all(v is not None for v in values):
                per_model[name] = values
            elif any(v is not None for v in values):
                raise ConfigError(f"{self.method}: parameter {name!r} is missing for some merged models")
        return self.spec.bind(per_model, global_, len(self.merged))

    def _kernel(self, kind: str) -> Callable[..., None] | None:
        """The compiled kernel, or None for the chunked eager one."""
        if self._compile is False:
            return None
        try:
            return _compiled(kind)
        except Exception as exc:  # noqa: BLE001 - no compiler here: eager is correct, just slower
            if self._compile:
                raise
            log.warning("torch.compile unavailable (%s); merging candidates in eager mode", exc)
            self._compile = False
            return None

    def _call(self, kind: str, out: Tensor, tensors: Sequence[Tensor], rest: Sequence[Any]) -> None:
        direct = out.dtype == torch.float32
        dest = out if direct else self._scratch_for(out.numel(), out.device)
        fused = self._kernel(kind)
        if fused is not None:
            try:
                fused(dest, *tensors, *rest)
            except Exception as exc:  # noqa: BLE001 - compile errors surface at first call
                if self._compile:
                    raise
                log.warning("torch.compile failed (%s); merging candidates in eager mode", exc)
                self._compile = False
                _run_chunked(_KERNELS[kind], self.chunk_size, dest, tensors, rest)
        else:
            _run_chunked(_KERNELS[kind], self.chunk_size, dest, tensors, rest)
        if not direct:
            out.copy_(dest)

    def _scratch_for(self, numel: int, device: torch.device, key: str = "out") -> Tensor:
        """A reusable float32 buffer of at least `numel` elements (no allocation per candidate)."""
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < numel or buf.device != device:
            buf = self._scratch[key] = torch.empty(numel, dtype=torch.float32, device=device)
        return buf[:numel]

    def _write(self, slot: _Merged, kw: dict[str, Any], seed: int) -> None:
        method = self.method
        n = len(self.merged)
        dev = slot.target.device
        if method == "slerp":
            c_a, c_b = M.slerp_coefficients_from_stats(*slot.slerp_stats, float(kw["t"]))
            self._call("slerp", slot.target, (slot.base, slot.inputs[0]), (_scalar(c_a, dev), _scalar(c_b, dev)))
            return
        weights = _vector(kw["weights"], dev)
        if method == "linear":
            divisor = 1.0
            if kw["normalize"]:
                divisor = float(sum(kw["weights"]))
                if divisor == 0:
                    raise ConfigError("linear: the weights sum to 0, so they cannot be normalized (set normalize: false)")
            self._call("linear", slot.target, (slot.inputs,), (weights, _scalar(divisor, dev)))
            return
        lam = _scalar(kw["lambda_"], dev)
        if method == "task_arithmetic":
            self._call("sum", slot.target, (slot.base, slot.inputs), (weights, _scalar(_sum_divisor(kw), dev), lam))
            return
        if method == "ties":
            thresholds = _vector([self._threshold(slot, i, rho) for i, rho in enumerate(kw["densities"])], dev)
            self._call("ties", slot.target, (slot.base, slot.inputs), (thresholds, weights, lam, bool(kw["normalize"])))
            return
        # DARE: keep where the model's 16-bit random value < its threshold; density >= 1 keeps all, unscaled
        densities = [float(d) for d in kw["densities"]]
        keep_below = _vector([32768 if d >= 1 else (-32768 if d <= 0 else M.dare_keep_threshold(d)) for d in densities], dev)
        rescale = _vector([d if (kw["rescale"] and 0 < d < 1) else 1.0 for d in densities], dev)
        bits = self._dare_bits(slot, M.tensor_seed(seed, slot.name), n)
        consensus = method == "dare_ties"
        self._call(
            "dare",
            slot.target,
            (slot.base, slot.inputs, bits),
            (keep_below, rescale, weights, _scalar(_sum_divisor(kw), dev), lam, bool(kw["normalize"]), consensus),
        )

    def _threshold(self, slot: _Merged, model: int, density: float) -> float:
        """The k-th largest |task vector| of `model` (keep |x| >= it), from the sorted magnitudes."""
        if density >= 1 or slot.numel == 0:
            return 0.0
        if density <= 0:
            return math.inf
        k = M.top_k_count(density, slot.numel)
        return float(slot.sorted_abs[model][slot.numel - k])

    def _dare_bits(self, slot: _Merged, tensor_seed: int, n: int) -> list[Tensor]:
        """Each merged model's 16-bit DARE random values for this tensor, as float32.

        Float32 (exact for 16-bit integers) keeps the fused kernel vectorised; with
        `cache_dare_bits` they are kept per tensor while the seed stays the same.
        """
        if slot.bits is not None and slot.bits_seed == tensor_seed:
            return slot.bits
        if self.cache_dare_bits:
            bits = [torch.empty(slot.numel, dtype=torch.float32, device=slot.target.device) for _ in range(n)]
        else:
            bits = [self._scratch_for(slot.numel, slot.target.device, f"bits{i}") for i in range(n)]
        for i, buf in enumerate(bits):
            buf.copy_(M.draw_mask_bits(M.dare_bit_stream(tensor_seed, i), slot.numel))
        if self.cache_dare_bits:
            slot.bits, slot.bits_seed = bits, tensor_seed
        return bits


def _sorted_magnitudes(delta: Tensor) -> Tensor:
    """|delta| in ascending order (numpy's SIMD sort is ~10x faster than torch.sort on CPU)."""
    return torch.from_numpy(np.sort(delta.abs().cpu().numpy())).to(delta.device)


def _fetch(models: Mapping[str, Mapping[str, Tensor]], ref: str, name: str, shape) -> Tensor:
    if ref not in models:
        raise ConfigError(f"unknown model {ref!r}")
    try:
        tensor = models[ref][name]
    except KeyError:
        raise MissingTensorError(f"missing tensor: {ref} has no {name}") from None
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise ShapeMismatchError(f"{name}: {ref} has shape {list(tensor.shape)}, the target {list(shape)}")
    return tensor


def _vector(values: Sequence[float], device: torch.device) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)


def _scalar(value: float, device: torch.device) -> Tensor:
    return torch.tensor(float(value), dtype=torch.float32, device=device)


def _sum_divisor(kw: Mapping[str, Any]) -> float:
    """Task-vector methods divide by sum(weights) when normalising, or by 1 if that is ~0."""
    if not kw.get("normalize"):
        return 1.0
    total = float(sum(float(w) for w in kw["weights"]))
    return total if abs(total) >= M.WEIGHT_SUM_EPS else 1.0


def in_place_params(model: torch.nn.Module) -> dict[str, Tensor]:
    """A model's parameters and buffers by state-dict name, as targets for in-place writes."""
    out = {name: p.data for name, p in model.named_parameters(remove_duplicate=False)}
    out.update({name: b for name, b in model.named_buffers(remove_duplicate=False)})
    return out
