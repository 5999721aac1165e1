"""The arithmetic of in-memory candidates, in two forms with the same results.

`evomm.merge.candidate` calls one function per method family for each merged tensor:

- fused (`fused(kind)`): the method written with plain torch ops and compiled with
  `torch.compile`, so that a tensor is one pass over memory (read the sources, write the
  target). Scalars come as tensors, so candidates don't trigger recompilation;
- eager (`EAGER[kind]`): for machines where compiling does not work. It walks the tensor in
  chunks that stay in cache, writes into reusable scratch buffers, and uses only float ops
  (hardshrink, heaviside, lerp, clamp), which are several times faster in eager torch than
  boolean masks and `where`.

Both agree with `evomm.merge.methods` to float32 rounding (tests/test_candidate.py).
Per-model values are lists in merge order; `xs` are the weighted, sparsified task vectors.
Inputs may be stored narrower than float32 (bfloat16 task vectors, int16 DARE bits: a 7B
candidate's state in a third of the memory); both forms compute in float32 all the same.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

# ----------------------------------------------------------------------------- fused


def _weighted_sum(xs: list[Tensor], weights: Tensor) -> Tensor:
    total = xs[0].float() * weights[0]
    for i in range(1, len(xs)):
        total = total + xs[i].float() * weights[i]
    return total


def _fused_linear(out: Tensor, sources: list[Tensor], weights: Tensor, divisor: Tensor) -> None:
    out.copy_(_weighted_sum(sources, weights) / divisor)


def _fused_sum(out: Tensor, base: Tensor, deltas: list[Tensor], weights: Tensor, divisor: Tensor, lam: Tensor) -> None:
    out.copy_(base.float() + _weighted_sum(deltas, weights) / divisor * lam)


def _fused_elect(out: Tensor, base: Tensor, xs: list[Tensor], weights: Tensor, lam: Tensor, normalize: bool) -> None:
    """TIES's sign election: keep the entries whose sign agrees with the summed mass."""
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
    out.copy_(base.float() + mixed * lam)


def _fused_ties(
    out: Tensor, base: Tensor, deltas: list[Tensor], ranks: list[Tensor], kept: Tensor, weights: Tensor, lam: Tensor,
    normalize: bool,
) -> None:
    """TIES keeps each model's entries ranked below its `kept` count (mergekit's order)."""
    xs = [torch.where(ranks[i] < kept[i], d.float(), 0.0) * weights[i] for i, d in enumerate(deltas)]
    _fused_elect(out, base, xs, weights, lam, normalize)


def _fused_dare(
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
    xs = [torch.where(b.float() < keep_below[i], d.float() / rescale[i], 0.0) * weights[i]
          for i, (d, b) in enumerate(zip(deltas, bits))]
    if consensus:
        _fused_elect(out, base, xs, weights, lam, normalize)
    else:
        total = xs[0]
        for i in range(1, len(xs)):
            total = total + xs[i]
        out.copy_(base.float() + total / divisor * lam)


def _fused_slerp(out: Tensor, a: Tensor, b: Tensor, c_a: Tensor, c_b: Tensor) -> None:
    out.copy_(a.float() * c_a + b.float() * c_b)


_FUSED_SOURCES: dict[str, Callable[..., None]] = {
    "linear": _fused_linear,
    "sum": _fused_sum,
    "ties": _fused_ties,
    "dare": _fused_dare,
    "slerp": _fused_slerp,
}
_COMPILED: dict[str, Callable[..., None]] = {}


def fused(kind: str) -> Callable[..., None]:
    """The compiled kernel of a method family (compiled on first use, shared by all callers)."""
    if kind not in _COMPILED:
        _COMPILED[kind] = torch.compile(_FUSED_SOURCES[kind], dynamic=True, fullgraph=True)
    return _COMPILED[kind]


# ----------------------------------------------------------------------------- eager


class Scratch:
    """Reusable buffers (float32 unless asked): eager kernels allocate nothing per candidate."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, key: str, numel: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel or buf.device != device or buf.dtype != dtype:
            buf = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel]


def _chunks(numel: int, chunk: int):
    for start in range(0, numel, chunk):
        yield start, min(numel, start + chunk)


def _f32(t: Tensor, s: int, e: int, scratch: Scratch, key: str) -> Tensor:
    """Elements s:e of `t` as float32: a view when it is float32, else a scratch copy."""
    if t.dtype == torch.float32:
        return t[s:e]
    return scratch.get(key, e - s, t.device).copy_(t[s:e])


def _all_f32(tensors: Sequence[Tensor]) -> bool:
    return all(t.dtype == torch.float32 for t in tensors)


#: Streaming kernels (linear, task arithmetic, slerp) make few passes per chunk, so they take
#: chunks this many times larger (still within the last-level cache): less per-call overhead.
STREAM_CHUNK_FACTOR = 4


def eager_linear(out: Tensor, sources: list[Tensor], weights: Sequence[float], divisor: float, *,
                 chunk: int, scratch: Scratch) -> None:
    if (len(sources) == 2 and divisor != 1 and math.isclose(weights[0] + weights[1], divisor, rel_tol=1e-12)
            and _all_f32(sources)):
        # a normalised pair is a lerp: exactly the one-pass floor
        torch.lerp(sources[0], sources[1], weights[1] / divisor, out=out)
        return
    for s, e in _chunks(out.numel(), chunk * STREAM_CHUNK_FACTOR):
        o = out[s:e]
        torch.mul(_f32(sources[0], s, e, scratch, "in"), weights[0], out=o)
        for x, w in zip(sources[1:], weights[1:]):
            o.add_(_f32(x, s, e, scratch, "in"), alpha=w)
        if divisor != 1:
            o.div_(divisor)


def eager_sum(out: Tensor, base: Tensor, deltas: list[Tensor], weights: Sequence[float], divisor: float, lam: float,
              *, chunk: int, scratch: Scratch) -> None:
    for s, e in _chunks(out.numel(), chunk * STREAM_CHUNK_FACTOR):
        o = out[s:e]
        torch.mul(_f32(deltas[0], s, e, scratch, "in"), weights[0], out=o)
        for x, w in zip(deltas[1:], weights[1:]):
            o.add_(_f32(x, s, e, scratch, "in"), alpha=w)
        if divisor != 1:
            o.div_(divisor)
        if lam != 1:
            o.mul_(lam)
        o.add_(_f32(base, s, e, scratch, "in"))


def eager_slerp(out: Tensor, a: Tensor, b: Tensor, c_a: float, c_b: float, *, chunk: int, scratch: Scratch) -> None:
    for s, e in _chunks(out.numel(), chunk * STREAM_CHUNK_FACTOR):
        torch.mul(_f32(a, s, e, scratch, "in"), c_a, out=out[s:e]).add_(_f32(b, s, e, scratch, "in"), alpha=c_b)


def _eager_elect(out: Tensor, base: Tensor, xs: list[Tensor], weights: Sequence[float], lam: float,
                 normalize: bool, scratch: Scratch) -> None:
    """TIES's sign election on one chunk with float ops only (see `_fused_elect`).

    With the elected sign s = +1 where sum(xs) >= 0, else -1, the entries that agree are
    those with x * s > 0, so mixed = s * sum(clamp_min(x * s, 0)) and the normaliser is
    sum(w * sign(clamp_min(x * s, 0))). All indicators are exact 0/1 floats; `heaviside`
    and boolean masks would read better but are several times slower in eager torch.
    """
    m, dev = out.numel(), out.device
    elected, agreeing, tmp = (scratch.get(k, m, dev) for k in ("elected", "agreeing", "tmp"))
    elected.copy_(xs[0])
    for x in xs[1:]:
        elected.add_(x)
    # sign(sum) is -1, 0 or 1; +1, clamp to [0, 1], *2 - 1 maps it to -1, 1, 1
    torch.clamp(torch.sign(elected, out=elected).add_(1.0), 0.0, 1.0, out=elected).mul_(2.0).sub_(1.0)
    divisor = scratch.get("divisor", m, dev) if normalize else None
    for i, (x, w) in enumerate(zip(xs, weights)):
        kept = torch.clamp_min(torch.mul(x, elected, out=tmp), 0.0, out=tmp)  # |x| where x agrees, else 0
        if i == 0:
            agreeing.copy_(kept)
        else:
            agreeing.add_(kept)
        if normalize:
            indicator = torch.sign(kept, out=tmp)  # 1 where x agrees, else 0
            if i == 0:
                torch.mul(indicator, w, out=divisor)
            else:
                divisor.add_(indicator, alpha=w)
    mixed = agreeing.mul_(elected)
    if normalize:
        unset = torch.sign(divisor, out=tmp).abs_().neg_().add_(1.0)  # 1 where divisor == 0
        mixed.div_(divisor.add_(unset))
    torch.add(base, mixed, alpha=lam, out=out)


def eager_ties(out: Tensor, base: Tensor, deltas: list[Tensor], ranks: list[Tensor], kept: Sequence[int],
               weights: Sequence[float], lam: float, normalize: bool, *, chunk: int, scratch: Scratch) -> None:
    numel = out.numel()
    live = [i for i, k in enumerate(kept) if k > 0]  # density 0 drops a model entirely
    if not live:
        out.copy_(base)
        return
    for s, e in _chunks(numel, chunk):
        xs = []
        for j, i in enumerate(live):
            x = scratch.get(f"x{j}", e - s, out.device)
            delta = _f32(deltas[i], s, e, scratch, "in")
            if kept[i] >= numel:
                torch.mul(delta, weights[i], out=x)
            else:  # integer ranks compared as integers (float32 is exact only below 2**24)
                keep = scratch.get("keep", e - s, out.device, torch.bool)
                torch.lt(ranks[i][s:e], kept[i], out=keep)
                torch.mul(delta, keep, out=x).mul_(weights[i])
            xs.append(x)
        _eager_elect(out[s:e], _f32(base, s, e, scratch, "base"), xs, [weights[i] for i in live], lam, normalize,
                     scratch)


def eager_dare(out: Tensor, base: Tensor, deltas: list[Tensor], bits: list[Tensor], keep_below: Sequence[float],
               rescale: Sequence[float], weights: Sequence[float], divisor: float, lam: float, normalize: bool,
               consensus: bool, *, chunk: int, scratch: Scratch) -> None:
    for s, e in _chunks(out.numel(), chunk):
        xs = []
        for i, (d, b) in enumerate(zip(deltas, bits)):
            x = scratch.get(f"x{i}", e - s, out.device)
            # bits are integers: clamp(keep_below - bits, 0, 1) is 1 where bits < keep_below, else 0
            x.copy_(b[s:e])
            torch.clamp(x.neg_().add_(keep_below[i]), 0, 1, out=x)
            x.mul_(_f32(d, s, e, scratch, "in")).div_(rescale[i]).mul_(weights[i])
            xs.append(x)
        if consensus:
            _eager_elect(out[s:e], _f32(base, s, e, scratch, "base"), xs, weights, lam, normalize, scratch)
        else:
            o = out[s:e].copy_(xs[0])
            for x in xs[1:]:
                o.add_(x)
            if divisor != 1:
                o.div_(divisor)
            if lam != 1:
                o.mul_(lam)
            o.add_(_f32(base, s, e, scratch, "base"))


EAGER: dict[str, Callable[..., None]] = {
    "linear": eager_linear,
    "sum": eager_sum,
    "ties": eager_ties,
    "dare": eager_dare,
    "slerp": eager_slerp,
}
