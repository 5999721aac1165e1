"""More of mergekit 0.1.5's merge methods: sparsified task vectors, SCE and RAM.

Each method is a plain function on float32 tensors that reads like its formula, registered
through `SPECS` (added to `evomm.merge.methods.METHODS`), with the per-model parameters the
PS genome may evolve and their bounds in `EVOLVABLE`. The conventions of
`evomm.merge.methods` hold (mergekit's names and defaults; `d_i = x_i - base` is model i's task
vector; `normalize` divides by the summed weights, `lambda` scales the merged task vector).
The meaning follows mergekit 0.1.5 (tests/test_methods_sparse.py compares against it):

- `rescale` (breadcrumbs, della) scales each sparsified task vector back to the L1 norm it had
  before sparsifying, unless either norm is below 1e-7 (mergekit's rule; note that evomm's
  dare_* instead rescale by 1/density);
- breadcrumbs keeps, of the n entries ranked by |d|, int(density * n) from the middle: the
  int(gamma * n) largest go first (fewer when density + gamma > 1), then as many of the
  smallest as needed. density >= 1 keeps everything, gamma included. Entries tied in magnitude
  with a boundary are all kept (mergekit breaks such ties arbitrarily; with distinct
  magnitudes the two agree exactly);
- della keeps each entry with probability density - epsilon + 2 epsilon r, r its magnitude
  rank scaled to [0, 1] within its row (dim 1, as in mergekit: for a conv kernel that is across
  input channels; a 1-D tensor is one row; a row of one entry gets r = 0.5, where mergekit
  divides 0 by 0 and fails). For 0 < density < 1, mergekit requires density +- epsilon inside
  (0, 1), strictly; evomm also refuses a negative epsilon. The random draw is evomm's, not
  mergekit's torch RNG: the same seeded bit stream as DARE (`dare_bit_stream(seed, model)`,
  16-bit resolution), so a recipe rebuilds its masks exactly, and epsilon 0 gives DARE's mask;
- SCE selects the int(select_topk * #nonzero) positions of largest variance across the task
  vectors (a float32 product, as mergekit; ties at the threshold all kept), weights each task
  vector by its mean square (normalised; uniform when the sum is < 1e-6), erases entries
  whose sign disagrees with the summed task vectors (TIES's election, ties to +), and divides
  by the summed weights kept at each position (at least 1e-6). It has no `weight`;
- RAM moves each entry by the mean of the task vectors that change it by more than epsilon;
  RAM+ (tensor-local) scales model i's unique entries by 1 + r clip(rho_i, 0, alpha), rho_i
  its shared-to-unique entry count ratio in the tensor (denominator at least epsilon). Where
  a model changes nothing in a tensor and epsilon is 0, mergekit's rho is 0/0 and the tensor
  comes out NaN; evomm leaves that model's (empty) contribution at 0.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomm.errors import ConfigError
from evomm.merge.methods import (
    ANY_VALUE,
    DARE_MASK_BITS,
    MethodSpec,
    _check_lengths,
    _sign_consensus_merge,
    _sum_merge,
    _task_vectors,
    dare_bit_stream,
    draw_mask_bits,
    rescale_l1,
)

#: SCE falls back to uniform weights below this summed mean square (as mergekit).
SCE_WEIGHT_SUM_EPS = 1e-6
#: SCE's smallest divisor (as mergekit's clamp).
SCE_DIVISOR_MIN = 1e-6



# ----------------------------------------------------------------------------- sparsifiers


def breadcrumbs_keep_mask(delta: Tensor, density: float, gamma: float) -> Tensor:
    """Keep int(density n) magnitudes from the middle: drop int(gamma n) largest, then the smallest.

    Of the n entries ranked by |delta| from the smallest, ranks [n_bot, n_bot + n_keep) stay,
    with n_bot = max(0, n - n_keep - n_top): outliers drop only as far as density allows.
    """
    n = delta.numel()
    n_keep = int(density * n)
    if n_keep <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    n_top = int(gamma * n)
    n_bot = max(0, n - n_keep - n_top)
    magnitudes = delta.abs()
    flat = magnitudes.reshape(-1)
    smallest_kept = torch.kthvalue(flat, n_bot + 1).values
    largest_kept = torch.kthvalue(flat, n_bot + n_keep).values
    return (magnitudes >= smallest_kept) & (magnitudes <= largest_kept)


def breadcrumbs_trim(delta: Tensor, density: float, gamma: float, rescale: bool) -> Tensor:
    """Model Breadcrumbs' sparsification of one task vector (density >= 1: unchanged)."""
    if density >= 1:
        return delta
    kept = torch.where(breadcrumbs_keep_mask(delta, density, gamma), delta, 0.0)
    return rescale_l1(kept, delta) if rescale else kept


def della_keep_probabilities(delta: Tensor, density: float, epsilon: float) -> Tensor:
    """p = density - epsilon + 2 epsilon * rank / (row length - 1), ranking |delta| along dim 1.

    Ranks count from 0 for the smallest magnitude (a stable sort orders ties by position).
    """
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    length = rows.shape[1]
    if length > 1:
        ranks = rows.abs().argsort(dim=1, stable=True).argsort(dim=1)
        scaled_rank = ranks.float() / (length - 1)
    else:
        scaled_rank = torch.full(rows.shape, 0.5)
    return ((density - epsilon) + scaled_rank * 2 * epsilon).reshape(delta.shape)


def sampled_keep_mask(probabilities: Tensor, seed: int, model_index: int) -> Tensor:
    """Keep each entry with its own probability, drawn from DARE's seeded bit stream.

    Like `dare_keep_mask`: entry j stays when its 16-bit draw is below round(p_j * 2**16)
    - 2**15, so a constant probability gives DARE's mask for the same seed and model.
    """
    scale = 1 << DARE_MASK_BITS
    bits = draw_mask_bits(dare_bit_stream(seed, model_index), probabilities.numel())
    thresholds = (probabilities * scale).round_().clamp_(0, scale).sub_(scale // 2)
    return bits.reshape(probabilities.shape) < thresholds


def della_drop(
    delta: Tensor, density: float, epsilon: float, seed: int, model_index: int, rescale: bool
) -> Tensor:
    """DELLA's MAGPRUNE on one task vector: keep with magnitude-ranked probability, rescale."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    keep = sampled_keep_mask(della_keep_probabilities(delta, density, epsilon), seed, model_index)
    kept = torch.where(keep, delta, 0.0)
    return rescale_l1(kept, delta) if rescale else kept


def _check_gammas(method: str, gammas: Sequence[float]) -> None:
    for i, gamma in enumerate(gammas):
        if not 0 <= gamma <= 1:
            raise ConfigError(f"{method}: gamma must be in [0, 1] (the share of largest magnitudes "
                              f"dropped), got {gamma} for model {i}")


def _check_epsilons(method: str, densities: Sequence[float], epsilons: Sequence[float]) -> None:
    for i, (density, epsilon) in enumerate(zip(densities, epsilons)):
        if epsilon < 0:
            raise ConfigError(f"{method}: epsilon must be >= 0, got {epsilon} for model {i}")
        if 0 < density < 1 and (density + epsilon >= 1 or density - epsilon <= 0):
            raise ConfigError(f"{method}: density +- epsilon must stay inside (0, 1), got density "
                              f"{density} and epsilon {epsilon} for model {i}")


# ----------------------------------------------------------------------------- methods


def breadcrumbs(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float],
    normalize: bool = False,
    rescale: bool = False,
    lambda_: float = 1.0,
) -> Tensor:
    """Model Breadcrumbs: base + lambda * sum_i w_i trim(d_i) (/ sum_i w_i), trimming both tails."""
    deltas = _breadcrumbs_deltas("breadcrumbs", base, tensors, weights, densities, gammas, rescale)
    return base.float().clone() if deltas is None else _sum_merge(base, deltas, weights, normalize, lambda_)


def breadcrumbs_ties(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float],
    normalize: bool = False,
    rescale: bool = False,
    lambda_: float = 1.0,
) -> Tensor:
    """Breadcrumbs' trim, then TIES's sign election over the weighted, trimmed task vectors."""
    deltas = _breadcrumbs_deltas("breadcrumbs_ties", base, tensors, weights, densities, gammas, rescale)
    return base.float().clone() if deltas is None else _sign_consensus_merge(base, deltas, weights, normalize, lambda_)


def _breadcrumbs_deltas(name: str, base: Tensor, tensors: Sequence[Tensor], weights: Sequence[float],
                        densities: Sequence[float], gammas: Sequence[float], rescale: bool) -> list[Tensor] | None:
    """Each model's task vector with both magnitude tails trimmed (None: no models)."""
    _check_lengths(len(tensors), weight=weights, density=densities, gamma=gammas)
    _check_gammas(name, gammas)
    if not tensors:
        return None
    return [breadcrumbs_trim(d, rho, g, rescale) for d, rho, g in zip(_task_vectors(base, tensors), densities, gammas)]


def della(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    epsilons: Sequence[float],
    seed: int,
    normalize: bool = True,
    rescale: bool = True,
    lambda_: float = 1.0,
) -> Tensor:
    """DELLA: drop task-vector entries with magnitude-ranked probability, then TIES's election."""
    deltas = _della_deltas("della", base, tensors, weights, densities, epsilons, seed, rescale)
    return base.float().clone() if deltas is None else _sign_consensus_merge(base, deltas, weights, normalize, lambda_)


def della_linear(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    epsilons: Sequence[float],
    seed: int,
    normalize: bool = False,
    rescale: bool = True,
    lambda_: float = 1.0,
) -> Tensor:
    """DELLA's drop, then task arithmetic: base + lambda * sum_i w_i drop(d_i) (/ sum_i w_i)."""
    deltas = _della_deltas("della_linear", base, tensors, weights, densities, epsilons, seed, rescale)
    return base.float().clone() if deltas is None else _sum_merge(base, deltas, weights, normalize, lambda_)


def _della_deltas(name: str, base: Tensor, tensors: Sequence[Tensor], weights: Sequence[float],
                  densities: Sequence[float], epsilons: Sequence[float], seed: int,
                  rescale: bool) -> list[Tensor] | None:
    """Each model's task vector after DELLA's magnitude-ranked drop (None: no models)."""
    _check_lengths(len(tensors), weight=weights, density=densities, epsilon=epsilons)
    _check_epsilons(name, densities, epsilons)
    if not tensors:
        return None
    return [della_drop(d, rho, eps, seed, i, rescale)
            for i, (d, rho, eps) in enumerate(zip(_task_vectors(base, tensors), densities, epsilons))]


def sce_select_mask(deltas: Tensor, select_topk: float) -> Tensor:
    """SCE's select: positions whose variance across models is in the top share of nonzero ones."""
    if select_topk >= 1:
        return torch.ones(deltas.shape[1:], dtype=torch.bool)
    variance = torch.var(deltas, dim=0, unbiased=False)
    k = int(torch.count_nonzero(variance) * select_topk)  # float32 product, as mergekit
    if k <= 0:
        return torch.zeros_like(variance, dtype=torch.bool)
    flat = variance.reshape(-1)
    return variance >= torch.kthvalue(flat, flat.numel() - k + 1).values


def sce(base: Tensor, tensors: Sequence[Tensor], select_topk: float = 1.0) -> Tensor:
    """SCE: select high-variance positions, weight by mean square, erase minority signs.

    base + sum_i w_i m_i d_i / max(sum_i w_i m_i, 1e-6), with w_i = mean(d_i^2) / sum_j mean(d_j^2)
    and m_i = [sign d_i == sign sum_j d_j], after zeroing the positions not selected.
    """
    if not tensors:
        return base.float().clone()
    deltas = torch.stack(_task_vectors(base, tensors))
    deltas.mul_(sce_select_mask(deltas, select_topk))
    mean_squares = deltas.square().reshape(len(tensors), -1).mean(dim=1)
    total = float(mean_squares.sum())
    if abs(total) >= SCE_WEIGHT_SUM_EPS:
        weights = mean_squares / total
    else:
        weights = torch.full_like(mean_squares, 1 / len(tensors))
    elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0)
    merged = torch.zeros_like(elected)
    divisor = torch.zeros_like(elected)
    for delta, weight in zip(deltas, weights):
        kept_weight = delta.sign().eq(elected) * weight  # a zero entry agrees with no sign
        merged.add_(delta * kept_weight)
        divisor.add_(kept_weight)
    return merged.div_(divisor.clamp_(min=SCE_DIVISOR_MIN)).add_(base.float())


def _check_epsilon(method: str, epsilon: float) -> None:
    if epsilon < 0:
        raise ConfigError(f"{method}: epsilon must be >= 0 (a magnitude threshold), got {epsilon}")


def ram(base: Tensor, tensors: Sequence[Tensor], epsilon: float = 1e-5) -> Tensor:
    """RAM: base + sum_i a_i d_i / max(1, sum_i a_i), a_i = [|d_i| > epsilon].

    An entry changed by one model takes that change whole; by several, their mean; by none,
    the base value.
    """
    _check_epsilon("ram", epsilon)
    if not tensors:
        return base.float().clone()
    deltas = _task_vectors(base, tensors)
    active = [d.abs() > epsilon for d in deltas]
    contributors = torch.stack(active).sum(dim=0)
    merged = torch.zeros_like(deltas[0])
    for delta, changes in zip(deltas, active):
        merged.add_(torch.where(changes, delta, 0.0))
    return merged.div_(contributors.clamp_(min=1)).add_(base.float())


def ramplus_tl(
    base: Tensor, tensors: Sequence[Tensor], r: float = 0.1, alpha: float = 0.2, epsilon: float = 1e-5
) -> Tensor:
    """RAM+ (tensor-local): RAM with model i's unique entries scaled by 1 + r clip(rho_i, 0, alpha).

    rho_i = (entries i changes along with other models) / max(entries only i changes, epsilon),
    counted over this tensor; shared entries are averaged as in RAM.
    """
    _check_epsilon("ramplus_tl", epsilon)
    if alpha < 0:
        raise ConfigError(f"ramplus_tl: alpha must be >= 0 (the bound on rho), got {alpha}")
    if not tensors:
        return base.float().clone()
    deltas = _task_vectors(base, tensors)
    active = [d.abs() > epsilon for d in deltas]
    contributors = torch.stack(active).sum(dim=0)
    unique, shared = contributors == 1, contributors > 1
    merged = torch.zeros_like(deltas[0])
    for delta, changes in zip(deltas, active):
        n_unique = int((changes & unique).sum())
        n_shared = int((changes & shared).sum())
        rho = n_shared / max(n_unique, epsilon) if n_unique else 0.0  # no unique entries: unused
        scale = 1 + r * min(max(rho, 0.0), alpha)
        merged.add_(torch.where(changes & unique, delta * scale, 0.0))
        merged.add_(torch.where(changes & shared, delta / contributors, 0.0))
    return merged.add_(base.float())


# ----------------------------------------------------------------------------- registry

_COMPAT = {"int8_mask": ANY_VALUE}  # mergekit's int8 sign masks: same values in float32


def _gta_spec(name, fn, extra: str, extra_default: float, normalize: bool, rescale: bool, seeded: bool):
    return MethodSpec(name, fn, needs_base=True, per_model_params=("weight", "density", extra),
                      per_model_defaults={"density": 1.0, extra: extra_default},
                      global_params={"normalize": normalize, "rescale": rescale, "lambda": 1.0},
                      compat_params=_COMPAT, uses_seed=seeded)


SPECS: tuple[MethodSpec, ...] = (
    _gta_spec("breadcrumbs", breadcrumbs, "gamma", 0.01, normalize=False, rescale=False, seeded=False),
    _gta_spec("breadcrumbs_ties", breadcrumbs_ties, "gamma", 0.01, normalize=False, rescale=False, seeded=False),
    _gta_spec("della", della, "epsilon", 0.15, normalize=True, rescale=True, seeded=True),
    _gta_spec("della_linear", della_linear, "epsilon", 0.15, normalize=False, rescale=True, seeded=True),
    MethodSpec("sce", sce, needs_base=True, per_model_params=(), global_params={"select_topk": 1.0},
               compat_params=_COMPAT),
    MethodSpec("ram", ram, needs_base=True, per_model_params=(), global_params={"epsilon": 1e-5}),
    MethodSpec("ramplus_tl", ramplus_tl, needs_base=True, per_model_params=(),
               global_params={"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}),
)

#: method -> {per-model parameter: (lower, upper) bounds that keep the method valid}
#: `weight` is valid at any value: (0, 1) is the PS space's default box, which its
#: `weight_bounds` may replace. della's density and epsilon are boxed so that every pair in
#: the box keeps density +- epsilon inside (0, 1) (0.9 + 0.09 < 1, 0.1 - 0.09 > 0); a density of
#: 1 (no pruning) is therefore outside della's box. breadcrumbs' gamma is valid up to 1; the box
#: stops at 0.1 (the paper drops about 1% of outliers). sce, ram and ramplus_tl have no
#: per-model parameters.
EVOLVABLE: dict[str, dict[str, tuple[float, float]]] = {
    "breadcrumbs": {"weight": (0.0, 1.0), "density": (0.05, 1.0), "gamma": (0.0, 0.1)},
    "breadcrumbs_ties": {"weight": (0.0, 1.0), "density": (0.05, 1.0), "gamma": (0.0, 0.1)},
    "della": {"weight": (0.0, 1.0), "density": (0.1, 0.9), "epsilon": (0.0, 0.09)},
    "della_linear": {"weight": (0.0, 1.0), "density": (0.1, 0.9), "epsilon": (0.0, 0.09)},
    "sce": {},
    "ram": {},
    "ramplus_tl": {},
}
