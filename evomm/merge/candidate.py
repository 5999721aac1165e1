"""Materialise merge candidates in memory, thousands of times, into one preallocated model.

The evolutionary search scores many recipes over the same source models. Re-reading
checkpoints, re-instantiating the model or recomputing what does not depend on the
candidate would dominate its time, so `CandidateMaterializer`:

- loads the sources once and keeps, per merged tensor, what the method needs (in
  `storage_dtype`: float32 by default, bfloat16 for a 7B search, computed in float32 anyway):
  the source tensors (linear), the base and the task vectors `x_i - base` (task arithmetic,
  TIES, DARE), both endpoints with their norms and dot product (SLERP);
- precomputes per tensor what no candidate changes: the sorted magnitudes of every task
  vector, so a TIES density becomes a threshold lookup instead of a k-th value search;
  and, per DARE seed, the random bits of the drop masks (candidates of one search usually
  share the seed, so their masks differ only through the density), kept as the int16 values
  they are;
- writes each candidate into the target tensors in place (`copy_` under `torch.no_grad()`):
  no model re-instantiation, no disk writes. Tensors that are not merged, and the rows of a
  vocabulary-sized tensor beyond those shared by all sources, are copied once at setup;
- runs each method as one fused pass per tensor (`torch.compile`, when it works on this
  machine), else as the same arithmetic in eager mode over cache-sized chunks. These fast
  forms exist for the six methods a benchmark showed them to pay for (linear, task
  arithmetic, TIES, DARE, SLERP); every other registered method keeps its sources and calls
  the very function `evomm merge` calls, tensor by tensor.

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
from evomm.merge import kernels as K
from evomm.merge import methods as M

log = logging.getLogger(__name__)

#: Elements per chunk in eager mode: the scratch tensors of a chunk stay in cache.
DEFAULT_CHUNK = 1 << 16
#: Methods with a fused / chunked form here (see the module docstring); others run as written.
FAST_METHODS = frozenset({"linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp"})


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


# ----------------------------------------------------------------------------- per-tensor state


@dataclass
class _Merged:
    """What one merged target tensor keeps between candidates (flat tensors in the storage dtype)."""

    name: str
    target: Tensor  # the region written per candidate (leading rows of the target), flat
    numel: int
    shape: tuple[int, ...] = ()  # the region's shape (methods that work along rows need it)
    base: Tensor | None = None  # (N,)
    inputs: list[Tensor] = field(default_factory=list)  # per merged model: source (linear) or task vector
    sorted_abs: list[Tensor] = field(default_factory=list)  # per merged model: ascending |task vector| (TIES)
    ranks: list[Tensor] = field(default_factory=list)  # per merged model: mergekit's keep order (TIES)
    slerp_stats: tuple[float, float, float] | None = None  # |a|, |b|, cos(a, b)
    bits_seed: int | None = None
    bits: list[Tensor] | None = None  # per merged model: DARE random values (int16) for `bits_seed`


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
    storage_dtype: dtype of the kept base / task vectors / sources (float32, or bfloat16 to
              hold a 7B pair in a third of the memory); the arithmetic is float32 either way.
    The state lives on each target tensor's device: targets on a GPU merge on the GPU.
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
        storage_dtype: torch.dtype = torch.float32,
    ):
        self.spec = M.method_spec(method)
        self.method = method
        if self.spec.needs_base and base is None:
            raise ConfigError(f"{method}: needs a base model")
        if base is not None and base not in models:
            raise ConfigError(f"base model {base!r} is not one of the sources ({', '.join(models)})")
        self.base = base
        if merged is None:
            merged = [ref for ref in models if not (self.spec.takes_base(base) and ref == base)]
        self.merged = list(merged)
        missing = [ref for ref in self.merged if ref not in models]
        if missing:
            raise ConfigError(f"merged model(s) {missing} are not among the sources")
        n, lo, hi = len(self.merged), self.spec.min_models, self.spec.max_models
        if n < lo or (hi is not None and n > hi):
            raise ConfigError(f"{method}: cannot merge {n} model(s) besides the base")
        if not storage_dtype.is_floating_point:
            raise ConfigError(f"storage_dtype must be a floating dtype, got {storage_dtype}")
        self.storage_dtype = storage_dtype
        self.chunk_size = int(chunk_size)
        self.cache_dare_bits = cache_dare_bits
        self._compile = compile
        self._slots: dict[str, _Merged] = {}
        self._scratch = K.Scratch()
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

        def keep(t: Tensor) -> Tensor:  # the float32 result, stored narrow if asked
            return t if self.storage_dtype == torch.float32 else t.to(self.storage_dtype)

        flat = region.reshape(-1) if region.is_contiguous() else None
        if flat is None or flat.data_ptr() != region.data_ptr():
            raise ConfigError(f"{name}: target tensors must be contiguous")
        slot = _Merged(name, flat, flat.numel(), shape)
        kind = self.method if self.method in FAST_METHODS else "generic"
        if kind == "generic":
            if self.spec.takes_base(self.base):
                slot.base = keep(load(self.base).clone())
            slot.inputs = [keep(load(ref).clone()) for ref in self.merged]
        elif kind == "linear":
            slot.inputs = [keep(load(ref).clone()) for ref in self.merged]
        elif kind == "slerp":
            a, b = load(self.base), load(self.merged[0])
            slot.base, slot.inputs = keep(a.clone()), [keep(b.clone())]
            slot.slerp_stats = M.slerp_stats(slot.base.float(), slot.inputs[0].float())  # of what is kept
        else:
            base = load(self.base).clone()
            slot.inputs = [keep(load(ref) - base) for ref in self.merged]
            slot.base = keep(base)
            if kind == "ties":
                slot.sorted_abs = [_sorted_magnitudes(d) for d in slot.inputs]
                slot.ranks = [M.magnitude_ranks(d) for d in slot.inputs]
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
        work = []  # bind and check everything before writing anything
        for names, p in groups:
            kwargs = self._bind(p)
            for name in names:
                slot = self._slots.get(name)
                if slot is None:
                    raise ConfigError(f"{name!r} is not a merged tensor of this candidate space")
                work.append((slot, kwargs))
        if len({slot.name for slot, _ in work}) != len(self._slots):
            given = {slot.name for slot, _ in work}
            missing = [n for n in self._slots if n not in given]
            raise ConfigError(f"candidate has no parameters for {len(missing)} merged tensor(s), e.g. {missing[0]!r}")
        with torch.no_grad():
            for slot, kwargs in work:
                self._write(slot, kwargs, seed)

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

    def _fused(self, kind: str) -> Callable[..., None] | None:
        """The compiled kernel, or None where eager mode is asked for or compiling failed."""
        if self._compile is False:
            return None
        try:
            return K.fused(kind)
        except Exception as exc:  # noqa: BLE001 - no compiler here: eager is correct, just slower
            return self._give_up_compiling(exc)

    def _give_up_compiling(self, exc: Exception) -> None:
        if self._compile:
            raise exc
        log.warning("torch.compile does not work here (%s); merging candidates in eager mode", exc)
        self._compile = False
        return None

    def _call(self, kind: str, out: Tensor, tensors: Sequence[Any], values: dict[str, Any]) -> None:
        """Run method family `kind` into `out`: fused if possible, else eager."""
        direct = out.dtype == torch.float32
        dest = out if direct else self._scratch.get("out", out.numel(), out.device)
        kernel = self._fused(kind)
        done = False
        if kernel is not None:
            try:
                kernel(dest, *tensors, *(_as_tensor(v, dest.device, integer=(k == "kept")) for k, v in values.items()))
                done = True
            except Exception as exc:  # noqa: BLE001 - compile errors surface at the first call
                self._give_up_compiling(exc)
        if not done:
            K.EAGER[kind](dest, *tensors, *values.values(), chunk=self.chunk_size, scratch=self._scratch)
        if not direct:
            out.copy_(dest)

    def _write(self, slot: _Merged, kw: dict[str, Any], seed: int) -> None:
        method = self.method
        if method not in FAST_METHODS or (method == "ties" and kw.get("rescale")):
            # the method's own function, as `evomm merge` runs it (TIES keeps task vectors)
            tensors = [t.float().reshape(slot.shape) for t in slot.inputs]
            base = slot.base.float().reshape(slot.shape) if slot.base is not None else None
            if method == "ties":
                tensors = [t + base for t in tensors]
            result = self.spec.run(base, tensors, kw, M.tensor_seed(seed, slot.name) if self.spec.uses_seed else None)
            slot.target.copy_(result.reshape(-1))
            return
        if method == "slerp":
            c_a, c_b = M.slerp_coefficients_from_stats(*slot.slerp_stats, float(kw["t"]))
            self._call("slerp", slot.target, (slot.base, slot.inputs[0]), {"c_a": c_a, "c_b": c_b})
            return
        weights = [float(w) for w in kw["weights"]]
        if method == "linear":
            divisor = 1.0
            if kw["normalize"]:
                divisor = float(sum(weights))
                if divisor == 0:
                    raise ConfigError("linear: the weights sum to 0, so they cannot be normalized (set normalize: false)")
            self._call("linear", slot.target, (slot.inputs,), {"weights": weights, "divisor": divisor})
            return
        lam = float(kw["lambda_"])
        if method == "task_arithmetic":
            values = {"weights": weights, "divisor": _sum_divisor(kw), "lam": lam}
            self._call("sum", slot.target, (slot.base, slot.inputs), values)
            return
        if method == "ties":
            if kw["tie_break"] not in M.TIE_BREAKS:
                raise ConfigError(f"tie_break: one of {M.TIE_BREAKS}, got {kw['tie_break']!r}")
            kept = [self._kept(slot, i, rho, kw["tie_break"]) for i, rho in enumerate(kw["densities"])]
            values = {"kept": kept, "weights": weights, "lam": lam, "normalize": bool(kw["normalize"])}
            self._call("ties", slot.target, (slot.base, slot.inputs, slot.ranks), values)
            return
        # DARE: keep where the model's 16-bit random value < its threshold; density >= 1 keeps all, unscaled
        densities = [float(d) for d in kw["densities"]]
        values = {
            "keep_below": [32768.0 if d >= 1 else (-32768.0 if d <= 0 else float(M.dare_keep_threshold(d)))
                           for d in densities],
            "rescale": [d if (kw["rescale"] and 0 < d < 1) else 1.0 for d in densities],
            "weights": weights,
            "divisor": _sum_divisor(kw),
            "lam": lam,
            "normalize": bool(kw["normalize"]),
            "consensus": method == "dare_ties",
        }
        bits = self._dare_bits(slot, M.tensor_seed(seed, slot.name), len(self.merged))
        self._call("dare", slot.target, (slot.base, slot.inputs, bits), values)

    def _kept(self, slot: _Merged, model: int, density: float, tie_break: str) -> int:
        """How many entries of `model`'s task vector TIES keeps (those of rank below it)."""
        if density >= 1 or slot.numel == 0:
            return slot.numel
        if density <= 0:
            return 0
        if tie_break == "mergekit":
            return M.top_k_count(density, slot.numel)
        # keep_all: every entry at least as large as the k-th (ranks run through ties in order)
        sorted_abs = slot.sorted_abs[model]
        threshold = sorted_abs[slot.numel - M.top_k_count(density, slot.numel)]
        return slot.numel - int(torch.searchsorted(sorted_abs, threshold.reshape(1), right=False))

    def _dare_bits(self, slot: _Merged, tensor_seed: int, n: int) -> list[Tensor]:
        """Each merged model's 16-bit DARE random values for this tensor (int16).

        With `cache_dare_bits` they are kept per tensor while the seed stays the same (the
        search's usual case); a new seed refills the same buffers.
        """
        if slot.bits is not None and slot.bits_seed == tensor_seed:
            return slot.bits
        device = slot.target.device
        if self.cache_dare_bits:
            bits = slot.bits or [torch.empty(slot.numel, dtype=torch.int16, device=device) for _ in range(n)]
        else:
            bits = [self._scratch.get(f"bits{i}", slot.numel, device, torch.int16) for i in range(n)]
        for i, buf in enumerate(bits):
            fill_mask_bits(M.dare_bit_stream(tensor_seed, i), buf)
        if self.cache_dare_bits:
            slot.bits, slot.bits_seed = bits, tensor_seed
        return bits


def fill_mask_bits(stream: np.random.SFC64, out: Tensor, chunk: int = 1 << 20) -> Tensor:
    """Fill `out` with `methods.draw_mask_bits(stream, out.numel())`, drawn piece by piece.

    Small pieces reuse the same memory and stay in cache for the cast; the stream is consumed
    exactly as by one large draw (pieces are multiples of 4 values, one 64-bit draw each).
    """
    chunk -= chunk % 4
    host = out.numpy() if out.device.type == "cpu" else None
    for start in range(0, out.numel(), chunk):
        stop = min(out.numel(), start + chunk)
        bits = M.draw_mask_bits(stream, stop - start)
        if host is not None:
            np.copyto(host[start:stop], bits.numpy(), casting="unsafe")
        else:
            out[start:stop].copy_(bits)
    return out


def _sorted_magnitudes(delta: Tensor) -> Tensor:
    """|delta| in ascending order, in delta's dtype (on the CPU numpy's SIMD sort is ~10x
    faster than torch.sort; on a GPU torch.sort stays there)."""
    if delta.device.type != "cpu":
        return torch.sort(delta.abs())[0]
    return torch.from_numpy(np.sort(delta.float().abs().numpy())).to(delta.dtype)


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


def _as_tensor(value: Any, device: torch.device, integer: bool = False) -> Any:
    """Scalars and per-model lists as float32 tensors for the compiled kernels (int64 for
    counts compared with integer ranks); flags stay bools."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)):
        if integer:
            return torch.tensor([int(v) for v in value], dtype=torch.int64, device=device)
        return torch.tensor([float(v) for v in value], dtype=torch.float32, device=device)
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
