"""Merge methods as plain functions on float32 tensors: each reads like its formula.

The meaning of every method and parameter follows mergekit 0.1.5, so that mergekit recipes
mean the same here (see tests/test_merge_methods.py, which compares against mergekit itself):

- weights are not normalised unless `normalize` is set; a normalised task-vector method divides
  by the sum of weights, or by 1 when that sum is ~0 (|sum| < 1e-8); a normalised linear merge
  with weights summing to exactly 0 has no meaning (mergekit returns inf) and raises instead;
- `lambda` scales the merged task vector after normalisation;
- TIES trims each task vector to its `density` share of largest magnitudes (k = max(1,
  int(density * numel)); density >= 1 keeps everything), weights it, elects a sign per entry
  by summed (weighted) mass (ties go to +), and keeps only the entries of the elected sign.
  Normalised TIES divides by the summed weights of the entries kept at each position.
  Exactly k entries are kept, chosen in the order of a descending `torch.argsort` of the
  magnitudes, as mergekit chooses them (`tie_break: mergekit`, the default), so entries tied
  at the k-th magnitude (common in 16-bit checkpoints) are kept or dropped as mergekit does.
  `tie_break: keep_all` keeps every entry tied with the k-th instead;
- DARE drops each task-vector entry with probability 1 - density and rescales the kept ones
  by 1/density (the DARE paper's rescale). mergekit 0.1.5 instead rescales each dropped task
  vector to its former L1 norm, which differs from 1/density by O(1/sqrt(numel)).
  The drop mask is reproducible from `seed` (see `dare_keep_mask`);
- SLERP's t=0 end is the base model (`a`); nearly colinear tensors (|cos| > 0.9995) are
  interpolated linearly; norms below 1e-8 count as 1.

The planning (which tensors, which per-layer values) lives in `evomm.merge.plan`; the fast
in-memory path for the evolutionary search lives in `evomm.merge.candidate` and must agree
with these functions.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from evomm.errors import ConfigError, ShapeMismatchError

#: |sum of weights| below this leaves a normalised task-vector merge undivided (as mergekit).
WEIGHT_SUM_EPS = 1e-8
#: SLERP falls back to linear interpolation above this |cosine| (as mergekit).
SLERP_DOT_THRESHOLD = 0.9995
SLERP_NORM_EPS = 1e-8
#: DARE keep decisions compare 16 random bits against round(density * 2**16).
DARE_MASK_BITS = 16
#: `rescale` leaves a sparsified task vector as is when either L1 norm is below this (as mergekit).
RESCALE_NORM_EPS = 1e-7


# ----------------------------------------------------------------------------- helpers


def _check_same_shape(tensors: Sequence[Tensor]) -> None:
    first = tensors[0]
    for other in tensors[1:]:
        if other.shape != first.shape:
            raise ShapeMismatchError(
                f"cannot merge tensors of shapes {tuple(first.shape)} and {tuple(other.shape)}"
            )


def _check_lengths(n: int, **per_model: Sequence[float]) -> None:
    for name, values in per_model.items():
        if len(values) != n:
            raise ConfigError(f"{name}: expected {n} values (one per merged model), got {len(values)}")


def top_k_count(density: float, numel: int) -> int:
    """How many entries TIES keeps: mergekit's max(1, int(density * numel))."""
    return max(1, int(density * numel))


def magnitude_threshold(delta: Tensor, density: float) -> float | None:
    """The k-th largest |delta| (TIES keeps |delta| >= it), or None when nothing is trimmed.

    `torch.kthvalue` finds it without sorting; density <= 0 returns +inf (keep nothing).
    """
    numel = delta.numel()
    if density >= 1 or numel == 0:
        return None
    if density <= 0:
        return math.inf
    k = top_k_count(density, numel)
    return float(torch.kthvalue(delta.abs().reshape(-1), numel - k + 1).values)


TIE_BREAKS = ("mergekit", "keep_all")


def magnitude_ranks(delta: Tensor) -> Tensor:
    """Each entry's place in mergekit's keep order: a descending `torch.argsort` of |delta|
    (float32, on the CPU, as mergekit sorts). TIES keeps the entries of rank < k."""
    order = torch.argsort(delta.detach().abs().reshape(-1).float().cpu(), descending=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    dtype = torch.int32 if order.numel() < 2**31 else torch.int64
    return ranks.to(dtype).reshape(delta.shape).to(delta.device)


def trim_by_magnitude(delta: Tensor, density: float, inplace: bool = False, tie_break: str = "mergekit") -> Tensor:
    """TIES's trim step: keep the top-`density` share of entries by magnitude.

    `tie_break` decides entries tied with the k-th largest magnitude (see the module doc).
    `inplace` zeroes the dropped entries of `delta` itself (for temporaries: saves a copy).
    """
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"tie_break: one of {TIE_BREAKS}, got {tie_break!r}")
    threshold = magnitude_threshold(delta, density)
    if threshold is None:
        return delta
    out = delta if inplace else delta.clone()
    below = delta.abs() < threshold
    if tie_break == "keep_all" or threshold == math.inf:
        return out.masked_fill_(below, 0.0)
    k = top_k_count(density, delta.numel())
    if delta.numel() - int(below.sum()) == k:  # nothing tied across the k-th: the same k entries
        return out.masked_fill_(below, 0.0)
    return out.masked_fill_(magnitude_ranks(delta) >= k, 0.0)  # mergekit's order decides the ties


def rescale_l1(kept: Tensor, delta: Tensor) -> Tensor:
    """`kept` scaled to the L1 norm of `delta` (mergekit's `rescale`); as is when a norm is ~0."""
    before, after = delta.abs().sum(), kept.abs().sum()
    if before < RESCALE_NORM_EPS or after < RESCALE_NORM_EPS:
        return kept
    return kept * (before / after)


def tensor_seed(seed: int, tensor_name: str) -> int:
    """A per-tensor DARE seed derived from a merge-wide seed and the tensor's (output) name.

    `evomm merge` and the in-memory candidates both use it, so a recipe rebuilds the exact
    masks a candidate was scored with.
    """
    state = np.random.SeedSequence([int(seed), zlib.crc32(tensor_name.encode())]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def dare_bit_stream(seed: int, model_index: int) -> np.random.SFC64:
    """The random-bit stream of DARE masks for one merged model of one tensor.

    numpy's SFC64 is a seeded, platform-stable generator about 3x faster than torch's CPU
    Mersenne Twister for raw bits; drawing the stream in pieces gives the same bits as at once.
    """
    return np.random.SFC64(np.random.SeedSequence([int(seed), int(model_index)]))


def dare_keep_threshold(density: float) -> int:
    """The signed 16-bit value below which an entry is kept: P(keep) = round(density*2**16)/2**16."""
    scale = 1 << DARE_MASK_BITS
    return min(scale, max(0, round(density * scale))) - scale // 2


def draw_mask_bits(stream: np.random.SFC64, count: int) -> Tensor:
    """`count` signed 16-bit random values from `stream` (4 per 64-bit draw)."""
    words = stream.random_raw((count + 3) // 4)
    return torch.from_numpy(words.view(np.int16)[:count])


def dare_keep_mask(seed: int, model_index: int, shape: torch.Size | Sequence[int], density: float) -> Tensor:
    """The boolean keep-mask DARE applies to merged model `model_index` (reproducible by seed)."""
    numel = math.prod(shape)
    bits = draw_mask_bits(dare_bit_stream(seed, model_index), numel)
    return (bits < dare_keep_threshold(density)).reshape(tuple(shape))


def dare_drop(delta: Tensor, density: float, seed: int, model_index: int, rescale: bool) -> Tensor:
    """DARE's drop step on one task vector: drop with probability 1 - density, rescale by 1/density."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    kept = torch.where(dare_keep_mask(seed, model_index, delta.shape, density), delta, 0.0)
    return kept.div_(density) if rescale else kept


def _task_vectors(base: Tensor, tensors: Sequence[Tensor]) -> list[Tensor]:
    _check_same_shape([base, *tensors])
    return [t.float() - base.float() for t in tensors]


def _weighted_sum(deltas: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    total = torch.zeros_like(deltas[0])
    for delta, weight in zip(deltas, weights):
        total.add_(delta, alpha=float(weight))
    return total


def _sum_merge(base: Tensor, deltas: list[Tensor], weights: Sequence[float], normalize: bool, lambda_: float) -> Tensor:
    """base + lambda * sum_i w_i d_i (/ sum_i w_i): task arithmetic after any sparsification."""
    mixed = _weighted_sum(deltas, weights)
    if normalize:
        divisor = float(sum(float(w) for w in weights))
        if abs(divisor) >= WEIGHT_SUM_EPS:
            mixed.div_(divisor)
    if lambda_ != 1:
        mixed.mul_(lambda_)
    return base.float() + mixed


def _sign_consensus_merge(
    base: Tensor, deltas: list[Tensor], weights: Sequence[float], normalize: bool, lambda_: float
) -> Tensor:
    """TIES's elect-and-merge: keep weighted entries whose sign agrees with the summed mass.

    `deltas` are this call's own temporaries, so they are weighted in place; one model at a
    time keeps the peak memory at a few tensors instead of a stack of all of them.
    """
    weighted = [d.mul_(float(w)) for d, w in zip(deltas, weights)]
    elected = _weighted_sum(weighted, [1.0] * len(weighted))
    elected = torch.where(elected >= 0, 1.0, -1.0)
    mixed = torch.zeros_like(elected)
    divisor = torch.zeros_like(elected) if normalize else None
    for wd, w in zip(weighted, weights):
        agree = wd.sign().eq_(elected)  # a zero entry agrees with no sign
        mixed.add_(wd.mul_(agree))
        if divisor is not None:
            divisor.add_(agree, alpha=float(w))
    if divisor is not None:
        mixed.div_(divisor.masked_fill_(divisor == 0, 1.0))
    if lambda_ != 1:
        mixed.mul_(lambda_)
    return mixed.add_(base.float())


# ----------------------------------------------------------------------------- methods


def linear(tensors: Sequence[Tensor], weights: Sequence[float], normalize: bool = True) -> Tensor:
    """sum_i w_i x_i, divided by sum_i w_i when `normalize`."""
    _check_same_shape(tensors)
    _check_lengths(len(tensors), weight=weights)
    merged = _weighted_sum([t.float() for t in tensors], weights)
    if normalize:
        total = float(sum(float(w) for w in weights))
        if total == 0:
            raise ConfigError("linear: the weights sum to 0, so they cannot be normalized (set normalize: false)")
        merged.div_(total)
    return merged


def task_arithmetic(
    base: Tensor, tensors: Sequence[Tensor], weights: Sequence[float], normalize: bool = False, lambda_: float = 1.0
) -> Tensor:
    """base + lambda * sum_i w_i (x_i - base)."""
    _check_lengths(len(tensors), weight=weights)
    if not tensors:
        return base.float().clone()
    return _sum_merge(base, _task_vectors(base, tensors), weights, normalize, lambda_)


def ties(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    normalize: bool = True,
    lambda_: float = 1.0,
    tie_break: str = "mergekit",
    rescale: bool = False,
) -> Tensor:
    """TIES: trim each task vector to its top-`density` magnitudes, elect signs, merge agreeing.

    `rescale` scales each trimmed task vector back to its L1 norm before weighting (mergekit's)."""
    _check_lengths(len(tensors), weight=weights, density=densities)
    if not tensors:
        return base.float().clone()
    deltas = _task_vectors(base, tensors)
    trimmed = [trim_by_magnitude(d, rho, inplace=not rescale, tie_break=tie_break) for d, rho in zip(deltas, densities)]
    if rescale:
        trimmed = [rescale_l1(t, d) for t, d in zip(trimmed, deltas)]
    deltas = trimmed
    return _sign_consensus_merge(base, deltas, weights, normalize, lambda_)


def dare_ties(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    seed: int,
    normalize: bool = False,
    rescale: bool = True,
    lambda_: float = 1.0,
) -> Tensor:
    """DARE-TIES: randomly drop task-vector entries (keep prob. density), then TIES's sign election.

    `normalize` defaults to False as in mergekit 0.1.5's dare_ties.
    """
    _check_lengths(len(tensors), weight=weights, density=densities)
    if not tensors:
        return base.float().clone()
    deltas = [
        dare_drop(d, rho, seed, i, rescale) for i, (d, rho) in enumerate(zip(_task_vectors(base, tensors), densities))
    ]
    return _sign_consensus_merge(base, deltas, weights, normalize, lambda_)


def dare_linear(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    seed: int,
    normalize: bool = False,
    rescale: bool = True,
    lambda_: float = 1.0,
) -> Tensor:
    """DARE then task arithmetic: base + lambda * sum_i w_i drop(x_i - base)."""
    _check_lengths(len(tensors), weight=weights, density=densities)
    if not tensors:
        return base.float().clone()
    deltas = [
        dare_drop(d, rho, seed, i, rescale) for i, (d, rho) in enumerate(zip(_task_vectors(base, tensors), densities))
    ]
    return _sum_merge(base, deltas, weights, normalize, lambda_)


def slerp_stats(a: Tensor, b: Tensor) -> tuple[float, float, float]:
    """(|a|, |b|, a.b) over the flattened tensors, in float64: all SLERP needs besides t."""
    x = a.reshape(-1).double()
    y = b.reshape(-1).double()
    return float(torch.linalg.vector_norm(x)), float(torch.linalg.vector_norm(y)), float(torch.dot(x, y))


def slerp_coefficients_from_stats(norm_a: float, norm_b: float, dot: float, t: float) -> tuple[float, float]:
    """(c_a, c_b) with slerp(a, b, t) = c_a * a + c_b * b; linear when nearly colinear."""
    norm_a = norm_a if norm_a > SLERP_NORM_EPS else 1.0
    norm_b = norm_b if norm_b > SLERP_NORM_EPS else 1.0
    cos = min(1.0, max(-1.0, dot / (norm_a * norm_b)))
    if abs(cos) > SLERP_DOT_THRESHOLD:
        return 1.0 - t, t
    theta = math.acos(cos)
    sin_theta = math.sin(theta)
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def slerp_coefficients(a: Tensor, b: Tensor, t: float) -> tuple[float, float]:
    """(c_a, c_b) with slerp(a, b, t) = c_a * a + c_b * b, over the whole flattened tensors."""
    return slerp_coefficients_from_stats(*slerp_stats(a, b), t)


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation from `a` (t=0, the base model) to `b` (t=1)."""
    _check_same_shape([a, b])
    c_a, c_b = slerp_coefficients(a, b, float(t))
    return torch.add(a.float() * c_a, b.float(), alpha=c_b)


# ----------------------------------------------------------------------------- registry

REQUIRED = object()  # marks a parameter without a default
ANY_VALUE = object()  # a compatibility parameter accepted with any value


@dataclass(frozen=True)
class MethodSpec:
    """What a method needs: its function, whether it takes a base, and its parameters.

    Parameter names are mergekit's (`weight`, `density`, `t`, `normalize`, `lambda`, ...).
    `per_model_params` take one value per merged (non-base) model; `global_params` one per
    tensor. `required` lists those without defaults. `compat_params` are accepted for mergekit
    compatibility and have no effect at the allowed value (ANY_VALUE: any value).
    """

    name: str
    fn: Callable[..., Tensor]
    needs_base: bool
    per_model_params: tuple[str, ...]
    global_params: Mapping[str, Any]
    per_model_defaults: Mapping[str, Any] = field(default_factory=dict)
    compat_params: Mapping[str, Any] = field(default_factory=dict)
    uses_seed: bool = False
    min_models: int = 1
    max_models: int | None = None
    #: the base model is optional: when a recipe names one it is passed as the base, not merged
    base_optional: bool = False

    def takes_base(self, base_model: str | None) -> bool:
        """Whether a recipe with this `base_model` hands the method a base (apart from the merged)."""
        return self.needs_base or (self.base_optional and base_model is not None)

    @property
    def required(self) -> tuple[str, ...]:
        per_model = tuple(p for p in self.per_model_params if p not in self.per_model_defaults)
        return per_model + tuple(p for p, v in self.global_params.items() if v is REQUIRED)

    @property
    def defaults(self) -> dict[str, Any]:
        """Every parameter's default (per-model and global), without the required ones."""
        out = dict(self.per_model_defaults)
        out.update({p: v for p, v in self.global_params.items() if v is not REQUIRED})
        return out

    def bind(self, per_model: Mapping[str, Sequence[Any]], global_: Mapping[str, Any], n_models: int) -> dict[str, Any]:
        """Validate parameters by mergekit name and return the keyword arguments of `fn`.

        `per_model` maps a per-model parameter to its values in merge order; `global_` maps a
        global parameter to its value. Missing parameters take their defaults.
        """
        if n_models < self.min_models or (self.max_models is not None and n_models > self.max_models):
            want = self.min_models if self.max_models == self.min_models else f"at least {self.min_models}"
            raise ConfigError(f"{self.name}: merges {want} model(s) besides any base, got {n_models}")
        kwargs: dict[str, Any] = {}
        for name, values in per_model.items():
            if name in self.compat_params:
                continue
            if name not in self.per_model_params:
                raise ConfigError(f"{self.name}: unknown per-model parameter {name!r}")
        for name in self.per_model_params:
            if name in per_model:
                values = [float(v) for v in per_model[name]]
                _check_lengths(n_models, **{name: values})
            elif name in self.per_model_defaults:
                values = [float(self.per_model_defaults[name])] * n_models
            else:
                raise ConfigError(f"{self.name}: parameter {name!r} is required")
            kwargs[_PER_MODEL_ARG[name]] = values
        for name, value in global_.items():
            if name in self.compat_params:
                allowed = self.compat_params[name]
                if allowed is not ANY_VALUE and value != allowed:
                    raise ConfigError(f"{self.name}: parameter {name!r} is only supported as {allowed!r}")
                continue
            if name not in self.global_params:
                raise ConfigError(f"{self.name}: unknown parameter {name!r}")
        for name, default in self.global_params.items():
            value = global_.get(name, default)
            if value is REQUIRED:
                raise ConfigError(f"{self.name}: parameter {name!r} is required")
            kwargs[_GLOBAL_ARG.get(name, name)] = value
        return kwargs

    def __call__(
        self,
        base: Tensor | None,
        tensors: Sequence[Tensor],
        per_model: Mapping[str, Sequence[Any]],
        global_: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """Run the method on one tensor with parameters named as in a recipe."""
        return self.run(base, tensors, self.bind(per_model, global_ or {}, len(tensors)), seed)

    def run(self, base: Tensor | None, tensors: Sequence[Tensor], kwargs: Mapping[str, Any],
            seed: int | None = None) -> Tensor:
        """Call the method with arguments already bound by `bind` (the in-memory search binds
        once per candidate and calls this per tensor: the same function `evomm merge` runs)."""
        kwargs = dict(kwargs)
        if self.uses_seed:
            if seed is None:
                raise ConfigError(f"{self.name}: needs a seed")
            kwargs["seed"] = int(seed)
        if self.name == "slerp":
            return self.fn(base, tensors[0], **kwargs)
        if self.needs_base:
            if base is None:
                raise ConfigError(f"{self.name}: needs a base model")
            return self.fn(base, tensors, **kwargs)
        return self.fn(tensors, **kwargs)


_PER_MODEL_ARG = {"weight": "weights", "density": "densities", "gamma": "gammas", "epsilon": "epsilons",
                  "scale": "scales"}
_GLOBAL_ARG = {"lambda": "lambda_"}

_GTA_COMPAT = {"int8_mask": ANY_VALUE}

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("linear", linear, needs_base=False, per_model_params=("weight",),
                   global_params={"normalize": True}),
        MethodSpec("task_arithmetic", task_arithmetic, needs_base=True, per_model_params=("weight",),
                   global_params={"normalize": False, "lambda": 1.0},
                   compat_params={**_GTA_COMPAT, "density": ANY_VALUE, "rescale": ANY_VALUE}),
        MethodSpec("ties", ties, needs_base=True, per_model_params=("weight", "density"),
                   per_model_defaults={"density": 1.0},
                   global_params={"normalize": True, "lambda": 1.0, "tie_break": "mergekit", "rescale": False},
                   compat_params=_GTA_COMPAT),
        MethodSpec("dare_ties", dare_ties, needs_base=True, per_model_params=("weight", "density"),
                   per_model_defaults={"density": 1.0},
                   global_params={"normalize": False, "rescale": True, "lambda": 1.0},
                   compat_params=_GTA_COMPAT, uses_seed=True),
        MethodSpec("dare_linear", dare_linear, needs_base=True, per_model_params=("weight", "density"),
                   per_model_defaults={"density": 1.0},
                   global_params={"normalize": False, "rescale": True, "lambda": 1.0},
                   compat_params=_GTA_COMPAT, uses_seed=True),
        MethodSpec("slerp", slerp, needs_base=True, per_model_params=(), global_params={"t": REQUIRED},
                   min_models=1, max_models=1),
    )
}


def method_spec(name: str) -> MethodSpec:
    """The spec of merge method `name`, or a ConfigError naming the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown merge method {name!r} (known: {', '.join(METHODS)})") from None


#: method -> {parameter the PS genome may evolve: (lower, upper) bounds that keep it valid}.
#: `t` is method-wide, the others per merged model. `weight` and `density` bounds are the
#: defaults a search space narrows (its weight_bounds, density_min).
EVOLVABLE: dict[str, dict[str, tuple[float, float]]] = {
    "linear": {"weight": (0.0, 1.0)},
    "task_arithmetic": {"weight": (0.0, 1.0)},
    "ties": {"weight": (0.0, 1.0), "density": (0.01, 1.0)},
    "dare_ties": {"weight": (0.0, 1.0), "density": (0.01, 1.0)},
    "dare_linear": {"weight": (0.0, 1.0), "density": (0.01, 1.0)},
    "slerp": {"t": (0.0, 1.0)},
}


def _register_more_methods() -> None:
    """Add the methods written in their own modules (they import this one's helpers)."""
    from evomm.merge import methods_geometric, methods_sparse

    for module in (methods_sparse, methods_geometric):
        for spec in module.SPECS:
            if spec.name in METHODS:
                raise RuntimeError(f"merge method {spec.name!r} registered twice")
            METHODS[spec.name] = spec
        EVOLVABLE.update(module.EVOLVABLE)


_register_more_methods()
