"""More of mergekit 0.1.5's merge methods (see evomm.merge.methods for the conventions).

Each method is a plain function on float32 tensors that reads like its formula, registered
through `SPECS` (added to `evomm.merge.methods.METHODS`), with the per-model parameters the
PS genome may evolve and their bounds in `EVOLVABLE`.

The methods here treat a tensor (or each row / column of it) as a point on a sphere, or pick
entries by how far two models are apart:

- `nuslerp`: SLERP between exactly two models (or, with a base, between their task vectors)
  at t = w_2 / (w_1 + w_2); over the whole tensor, or one arc per row or per column;
- `multislerp`: barycentric SLERP of any number of models (or task vectors) in the tangent
  space at their weighted mean direction;
- `karcher`: the equal-weight Karcher (Riemannian) mean of the directions, scaled by the mean
  norm; a `base_model` counts as one more model (mergekit ignores its role);
- `model_stock`: lerp from the base to the average of the models by t = N cos / (1 + (N-1) cos),
  cos the mean pairwise cosine of the task vectors (per tensor, or per row: `filter_wise`);
- `nearswap`: take the other model's value where it is within `t` of the base's, blending
  by t / |a - b| where it is further;
- `arcee_fusion`: take the other model's value where its change is an outlier of
  |b - a| * KL(softmax(b) || softmax(a)) (above median + 1.5 IQR);
- `passthrough`: one model's tensor, times an optional per-model `scale`.

`nuslerp` and `multislerp` take a base model optionally (mergekit's BasePolicy.OPTIONAL).
Their functions and specs accept one, but a recipe currently runs them without a base only:
the planner's `needs_base` is all-or-nothing, so a `base_model` would join the merged models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from evomm.errors import ConfigError
from evomm.merge.methods import REQUIRED, MethodSpec, _check_lengths, _check_same_shape

#: nuslerp: |w_1 + w_2| below this interpolates halfway (as mergekit).
NUSLERP_WEIGHT_EPS = 1e-6
#: nuslerp: norms are clamped to this before normalising; 1 - cos^2 <= COLINEAR_EPS^2 is linear.
NUSLERP_NORM_EPS = 1e-7
NUSLERP_COLINEAR_EPS = 1e-8
#: model_stock: the clamp on |d_i| |d_j| and the singular 1 + (N-1) cos (as mergekit).
MODEL_STOCK_NORM_EPS = 1e-6
MODEL_STOCK_SINGULAR_EPS = 1e-6
#: nearswap: |a - b| is clamped to this before dividing.
NEARSWAP_EPS = 1e-6
#: arcee_fusion: added to both softmax distributions before the KL divergence.
FUSION_EPS = 1e-8

# recipe name -> keyword of the method's function (methods.py maps weight -> weights likewise)


# ----------------------------------------------------------------------------- helpers


def _as_float(tensors: Sequence[Tensor]) -> list[Tensor]:
    return [t.float() for t in tensors]


def _unit(x: Tensor, dim: int, eps: float) -> Tensor:
    """x / max(|x|, eps) along `dim`."""
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp(min=eps)


def _slerp_along(a: Tensor, b: Tensor, t: float, dim: int) -> Tensor:
    """SLERP of every pair of vectors of `a` and `b` along `dim`; linear where they are colinear.

    slerp = (sin((1-t) theta) a + sin(t theta) b) / sin(theta), cos(theta) = <a, b> / |a| |b|;
    the vectors are not normalised, so the norm is interpolated too. (Nearly antiparallel
    vectors that are not exactly so make sin(theta) tiny: the result is then ill-conditioned,
    here as in mergekit, whose order of operations this follows.)
    """
    cos = (_unit(a, dim, NUSLERP_NORM_EPS) * _unit(b, dim, NUSLERP_NORM_EPS)).sum(dim=dim, keepdim=True)
    cos = cos.clamp(-1.0, 1.0)
    colinear = (1 - cos.square()) <= NUSLERP_COLINEAR_EPS**2
    theta = torch.acos(cos.masked_fill(colinear, 0.0))  # colinear: any finite angle, replaced below
    arc = (torch.sin((1.0 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    return torch.where(colinear, (1.0 - t) * a + t * b, arc)


def _check_base(base: Tensor | None, tensors: Sequence[Tensor]) -> None:
    _check_same_shape(list(tensors) if base is None else [base, *tensors])


# ----------------------------------------------------------------------------- methods


def nuslerp(
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    nuslerp_row_wise: bool = False,
    nuslerp_flatten: bool = True,
    base: Tensor | None = None,
) -> Tensor:
    """SLERP from model 1 (t=0) to model 2 (t=1) at t = w_2 / (w_1 + w_2) (0.5 when the sum is ~0).

    With a `base`, the task vectors x_i - base are interpolated and the base added back.
    `nuslerp_flatten` (default) takes one arc through the whole tensors; otherwise one arc per
    row (vectors along the last dim), or per column (along dim 0) with `nuslerp_row_wise`.
    """
    if len(tensors) != 2:
        raise ConfigError(f"nuslerp: merges exactly 2 models, got {len(tensors)}")
    _check_lengths(2, weight=weights)
    _check_base(base, tensors)
    w1, w2 = float(weights[0]), float(weights[1])
    t = 0.5 if abs(w1 + w2) < NUSLERP_WEIGHT_EPS else w2 / (w1 + w2)
    a, b = _as_float(tensors)
    if base is not None:
        a, b = a - base.float(), b - base.float()
    if nuslerp_flatten:
        merged = _slerp_along(a.reshape(-1), b.reshape(-1), t, dim=-1).reshape(a.shape)
    else:
        merged = _slerp_along(a, b, t, dim=0 if nuslerp_row_wise else -1)
    return merged if base is None else merged + base.float()


def multislerp(
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    normalize_weights: bool = True,
    eps: float = 1e-8,
    base: Tensor | None = None,
) -> Tensor:
    """Barycentric SLERP: the weighted mean of the directions u_i = x_i / |x_i|, taken on the sphere.

    m = normalised sum_i w_i u_i; the tangent vectors v_i = u_i - <u_i, m> m are averaged,
    tau = sum_i w_i v_i, and mapped back: exp_m(tau) = cos|tau| m + sin|tau| tau/|tau|; the
    result has norm sum_i w_i |x_i|. Weights are divided by their sum when
    `normalize_weights`. With a `base`, the x_i are task vectors and the base is added back.
    One model is returned as it is; two whose weighted directions cancel are mixed linearly.
    """
    _check_lengths(len(tensors), weight=weights)
    if not tensors:
        raise ConfigError("multislerp: merges at least 1 model, got 0")
    _check_base(base, tensors)
    if len(tensors) == 1:
        return tensors[0].float().clone()
    w = [float(x) for x in weights]
    if normalize_weights:
        total = sum(w)
        if total == 0:
            raise ConfigError("multislerp: the weights sum to 0, so they cannot be normalized "
                              "(set normalize_weights: false)")
        w = [x / total for x in w]
    shape = tensors[0].shape
    xs = [x.reshape(-1) for x in _as_float(tensors)]
    if base is not None:
        xs = [x - base.float().reshape(-1) for x in xs]
    norms = [torch.linalg.vector_norm(x) for x in xs]
    units = [x / (n + eps) for x, n in zip(xs, norms)]
    mean = sum(wi * u for wi, u in zip(w, units))
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if len(xs) != 2:
            raise ConfigError("multislerp: the weighted directions of the models cancel out (antipodal "
                              "tensors with balancing weights); use different weights")
        merged = w[0] * xs[0] + w[1] * xs[1]
    else:
        mean = mean / mean_norm
        tau = sum(wi * (u - (u * mean).sum() * mean) for wi, u in zip(w, units))
        angle = torch.linalg.vector_norm(tau) + eps
        on_sphere = torch.cos(angle) * mean + tau * (torch.sin(angle) / angle)
        merged = on_sphere * sum(wi * n for wi, n in zip(w, norms))
    merged = merged.reshape(shape)
    return merged if base is None else merged + base.float()


def karcher(tensors: Sequence[Tensor], max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """The equal-weight Karcher mean on the unit sphere, scaled by the mean norm (1/n) sum_i |x_i|.

    Directions of tensors with |x_i| <= tol are left out of the mean (their norms still count
    in the scale). Starting from the normalised Euclidean mean of the directions, each step
    moves along the mean log map, sum_i (theta_i / sin theta_i)(u_i - cos theta_i m) / k, by
    its length; it stops when that is below `tol` or after `max_iter` steps.
    """
    if not tensors:
        raise ConfigError("karcher: merges at least 1 model, got 0")
    _check_same_shape(tensors)
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 0:
        raise ConfigError(f"karcher: max_iter must be a whole number >= 0, got {max_iter!r}")
    if not tol >= 0:
        raise ConfigError(f"karcher: tol must be >= 0, got {tol!r}")
    if len(tensors) == 1:
        return tensors[0].float().clone()
    shape = tensors[0].shape
    xs = [x.reshape(-1) for x in _as_float(tensors)]
    norms = [torch.linalg.vector_norm(x) for x in xs]
    scale = sum(n / len(xs) for n in norms)
    units = [x / n for x, n in zip(xs, norms) if n > tol]
    if not units:
        return torch.zeros(shape)
    alpha = 1.0 / len(units)

    mean = sum(alpha * u for u in units)
    mean_norm = torch.linalg.vector_norm(mean)
    mean = units[0].clone() if mean_norm < tol else mean / mean_norm
    for _ in range(int(max_iter)):
        step = torch.zeros_like(mean)
        for u in units:
            cos = torch.dot(mean, u).clamp(-1.0, 1.0)
            theta = torch.arccos(cos)
            if theta < tol:
                continue
            step += alpha * (theta / torch.sin(theta)) * (u - cos * mean)
        length = torch.linalg.vector_norm(step)
        if length < tol:
            break
        mean = torch.cos(length) * mean + torch.sin(length) * (step / length)
        mean_norm = torch.linalg.vector_norm(mean)
        if mean_norm > tol:
            mean = mean / mean_norm
    return (scale * mean).reshape(shape)


def model_stock(base: Tensor, tensors: Sequence[Tensor], filter_wise: bool = False) -> Tensor:
    """Model Stock: lerp(base, mean_i x_i, t) with t = N cos / (1 + (N - 1) cos).

    cos is the mean pairwise cosine of the task vectors x_i - base (each |d_i||d_j| clamped to
    1e-6; cosines clamped to [-1, 1]), over the whole tensor, or per row (vectors along the
    last dim; a 1-D tensor is one row) with `filter_wise`. Where 1 + (N-1) cos is ~0 the base is
    kept.
    """
    if len(tensors) < 2:
        raise ConfigError(f"model_stock: merges at least 2 models besides the base, got {len(tensors)}")
    _check_same_shape([base, *tensors])
    w0 = base.float()
    ws = _as_float(tensors)
    if not filter_wise:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    elif w0.dim() <= 1:
        w0, ws = w0.reshape(1, -1), [w.reshape(1, -1) for w in ws]
    deltas = [w - w0 for w in ws]
    norms = [torch.linalg.vector_norm(d, dim=-1) for d in deltas]
    cosines = [
        ((deltas[i] * deltas[j]).sum(dim=-1) / (norms[i] * norms[j]).clamp(min=MODEL_STOCK_NORM_EPS)).clamp(-1, 1)
        for i in range(len(deltas))
        for j in range(i + 1, len(deltas))
    ]
    cos = (sum(cosines) / len(cosines)).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < MODEL_STOCK_SINGULAR_EPS
    t = torch.where(singular, 0.0, n * cos / denominator.masked_fill(singular, 1.0))
    average = sum(ws) / n
    return torch.lerp(w0, average, t).reshape(base.shape)


def nearswap(base: Tensor, tensors: Sequence[Tensor], t: float) -> Tensor:
    """NearSwap: lerp(a, b, clamp(t / |a - b|, 0, 1)) entry by entry (a: the base, b: the model).

    Entries closer than `t` are taken from the model; further ones move towards it by t / |a - b|.
    """
    if len(tensors) != 1:
        raise ConfigError(f"nearswap: merges exactly 1 model besides the base, got {len(tensors)}")
    _check_same_shape([base, *tensors])
    a, b = base.float(), tensors[0].float()
    weight = (float(t) / (a - b).abs().clamp(min=NEARSWAP_EPS)).clamp(0.0, 1.0)
    return torch.lerp(a, b, weight)


def fusion_importance(base: Tensor, other: Tensor) -> Tensor:
    """Arcee Fusion's importance: |b - a| * KL(softmax(b) || softmax(a)), the KL per row (last dim)."""
    p = torch.softmax(other, dim=-1) + FUSION_EPS
    q = torch.softmax(base, dim=-1) + FUSION_EPS
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    return (other - base).abs() * kl


def outlier_threshold(scores: Tensor) -> float:
    """median + 1.5 IQR of `scores`, each quartile the sorted value at floor(q (n - 1))."""
    flat = scores.reshape(-1)
    last = flat.numel() - 1

    def quantile(numerator: int) -> float:  # q = numerator / 4
        return float(torch.kthvalue(flat, numerator * last // 4 + 1).values)

    q1, median, q3 = quantile(1), quantile(2), quantile(3)
    return median + 1.5 * (q3 - q1)


def arcee_fusion(base: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    """Arcee Fusion: the model's value where its importance is an outlier (>= median + 1.5 IQR).

    The quartiles are exact here; mergekit estimates them from 1e6 entries drawn at random
    (unseeded) when a tensor has more.
    """
    if len(tensors) != 1:
        raise ConfigError(f"arcee_fusion: merges exactly 1 model besides the base, got {len(tensors)}")
    _check_same_shape([base, *tensors])
    a, b = base.float(), tensors[0].float()
    importance = fusion_importance(a, b)
    return torch.where(importance >= outlier_threshold(importance), b, a)


def passthrough(tensors: Sequence[Tensor], scales: Sequence[float]) -> Tensor:
    """The one model's tensor, times its `scale` (1: unchanged)."""
    if len(tensors) != 1:
        raise ConfigError(f"passthrough: takes exactly 1 model, got {len(tensors)}")
    _check_lengths(1, scale=scales)
    return tensors[0].float() * float(scales[0])


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class OptionalBaseSpec(MethodSpec):
    """A method whose base model is optional (mergekit's BasePolicy.OPTIONAL).

    `needs_base` stays False (a recipe need not name a base); a base given to the call is
    passed on as the function's `base` keyword.
    """

    base_optional: bool = True

    def run(self, base: Tensor | None, tensors: Sequence[Tensor], kwargs: Mapping[str, Any],
            seed: int | None = None) -> Tensor:
        """Call the method with arguments already bound by `bind`, and the base if one is given."""
        return self.fn(tensors, base=base, **kwargs)


SPECS: tuple[MethodSpec, ...] = (
    OptionalBaseSpec("nuslerp", nuslerp, needs_base=False, per_model_params=("weight",),
                     global_params={"nuslerp_row_wise": False, "nuslerp_flatten": True},
                     min_models=2, max_models=2),
    OptionalBaseSpec("multislerp", multislerp, needs_base=False, per_model_params=("weight",),
                     global_params={"normalize_weights": True, "eps": 1e-8}, min_models=1),
    MethodSpec("karcher", karcher, needs_base=False, per_model_params=(),
               global_params={"max_iter": 10, "tol": 1e-5}, min_models=1),
    MethodSpec("model_stock", model_stock, needs_base=True, per_model_params=(),
               global_params={"filter_wise": False}, min_models=2),
    MethodSpec("nearswap", nearswap, needs_base=True, per_model_params=(), global_params={"t": REQUIRED},
               min_models=1, max_models=1),
    MethodSpec("arcee_fusion", arcee_fusion, needs_base=True, per_model_params=(), global_params={},
               min_models=1, max_models=1),
    MethodSpec("passthrough", passthrough, needs_base=False, per_model_params=("scale",),
               per_model_defaults={"scale": 1.0}, global_params={}, min_models=1, max_models=1),
)

#: method -> {parameter the PS genome may evolve: (lower, upper) bounds that keep it valid}
#: (`t` is method-wide, the others per merged model). nuslerp: t = w_2 / (w_1 + w_2) stays in
#: [0, 1] (both 0: halfway); multislerp: positive weights never sum to 0 (normalize_weights);
#: passthrough: scale 1 (unchanged) inside; nearswap: any t >= 0 is valid (0 keeps the base),
#: the upper end is in weight units, about the size of a fine-tune's changes.
#: karcher, model_stock and arcee_fusion have nothing to evolve.
EVOLVABLE: dict[str, dict[str, tuple[float, float]]] = {
    "nuslerp": {"weight": (0.0, 1.0)},
    "multislerp": {"weight": (0.01, 1.0)},
    "nearswap": {"t": (0.0, 0.01)},
    "passthrough": {"scale": (0.0, 2.0)},
}
