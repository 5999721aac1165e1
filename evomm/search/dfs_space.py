"""The data-flow-space (DFS) genome: which layers a token passes through, and at what scale.

Following Akiba et al. (2024), the sources' layer stacks are concatenated (M layers in all)
and the concatenation is repeated r times, giving T = M·r *slots*. A candidate is

* an inclusion value per slot, in [-1, 1]: slot t is on the path when its value is > 0.
  The path keeps the slot order (reordering hurt in the paper), so it walks through the
  repeated sequence front to back and can be deeper than any source;
* a scaling table W: the hidden state passed from layer i to layer j is multiplied by W_ij.
  `scaling="layer_pair"` is the paper's M×M table, restricted to the pairs a path can
  contain (i < j in concatenation order when r = 1; all pairs when r ≥ 2);
  `scaling="source_pair"` is a coarse S×S table over source models (S = number of sources);
  `scaling="none"` keeps every scale at 1. `scale_own_order=False` leaves a step from layer l
  to layer l + 1 of the same source (the wiring that source was trained with) unscaled, so a
  perturbation of W cannot damage the stretches of a path that copy a source, the initial path
  above all. Measured, it did not help (docs/evolve.md, "DFS: what was tried"), so the default
  keeps the paper's W on every step. W entries are searched as log2(scale) in
  [-scale_range, scale_range] (so scale ∈ [2^-range, 2^range], 1 at 0): multiplicative
  changes up and down are symmetric for CMA-ES.

Length rules (applied in this order; deterministic):
1. at most `max_length` layers: if more slots are > 0, keep the `max_length` largest values
   (equal values: the earlier slot wins), in slot order;
2. at least `min_length` layers (default 1, so every candidate is a runnable model): if fewer
   slots are > 0, add the largest remaining values (equal values: earlier slot) until there are.

`initial()` is the identity candidate: the slots of one source's layers in the first repeat
are set to +init_margin, all others to -init_margin, all W at scale 1, so it decodes to
exactly that source model (the DFS model then reproduces it).

The decoded spec is plain JSON data a `DFSForCausalLM` can apply
(`evomm.models.dfs.apply_spec`): `{"type": "dfs", "sources", "path", "scales", "slots",
"embed_source", "head_source"}` with `scales[p]` the scale on the hidden state entering path
position p (position 0 takes the embeddings unscaled). Sources are just names (or models), so
PS+DFS — DFS over a PS result and a source model — needs nothing special.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from evomm.errors import ConfigError, DFSError

Scaling = Literal["layer_pair", "source_pair", "none"]
SCALINGS = ("layer_pair", "source_pair", "none")


class DFSSpace:
    """The DFS genome over sources with `num_layers[s]` layers each (see the module docstring)."""

    def __init__(
        self,
        num_layers: Sequence[int],
        sources: Sequence[str] | None = None,
        *,
        repeats: int = 2,
        max_length: int | None = None,
        min_length: int = 1,
        scaling: Scaling = "layer_pair",
        scale_range: float = 1.0,
        init_source: int = 0,
        init_margin: float = 0.5,
        embed_source: int = 0,
        head_source: int | None = None,
        scale_own_order: bool = True,
    ) -> None:
        self.num_layers = [int(n) for n in num_layers]
        if not self.num_layers or any(n < 1 for n in self.num_layers):
            raise ConfigError(f"dfs: every source needs at least one layer, got num_layers={self.num_layers}")
        n_sources = len(self.num_layers)
        self.sources = [str(s) for s in sources] if sources is not None else [f"source{i}" for i in range(n_sources)]
        if len(self.sources) != n_sources:
            raise ConfigError(f"dfs: {len(self.sources)} source names for {n_sources} layer counts")
        if repeats < 1:
            raise ConfigError(f"dfs: repeats must be >= 1, got {repeats}")
        if scaling not in SCALINGS:
            raise ConfigError(f"dfs: scaling must be one of {SCALINGS}, got {scaling!r}")
        if not scale_range > 0:
            raise ConfigError(f"dfs: scale_range must be > 0, got {scale_range}")
        if not 0 < init_margin <= 1:
            raise ConfigError(f"dfs: init_margin must be in (0, 1], got {init_margin}")
        head_source = embed_source if head_source is None else head_source
        for label, idx in (("init_source", init_source), ("embed_source", embed_source),
                           ("head_source", head_source)):
            if not 0 <= idx < n_sources:
                raise ConfigError(f"dfs: {label}={idx} out of range (have {n_sources} sources)")
        self.repeats = int(repeats)
        self.scaling: Scaling = scaling
        self.scale_range = float(scale_range)
        self.init_source = int(init_source)
        self.init_margin = float(init_margin)
        self.embed_source = int(embed_source)
        self.head_source = int(head_source)
        self.scale_own_order = bool(scale_own_order)

        # one concatenated layer sequence: global index g -> (source, layer)
        self._layers = [(s, l) for s, n in enumerate(self.num_layers) for l in range(n)]
        self.total_layers = len(self._layers)  # M
        self.num_slots = self.total_layers * self.repeats  # T
        self.max_length = self.num_slots if max_length is None else int(max_length)
        self.min_length = int(min_length)
        if not 1 <= self.min_length <= self.max_length <= self.num_slots:
            raise ConfigError(f"dfs: need 1 <= min_length ({self.min_length}) <= max_length "
                              f"({self.max_length}) <= slots ({self.num_slots})")
        init_depth = self.num_layers[self.init_source]
        if not self.min_length <= init_depth <= self.max_length:
            raise ConfigError(f"dfs: the initial path ({init_depth} layers of source {self.init_source}) "
                              f"breaks the length limits [{self.min_length}, {self.max_length}]")
        self._pairs = self._scale_pairs()
        self._pair_index = {pair: k for k, pair in enumerate(self._pairs)}

    # -- SearchSpace ----------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.num_slots + len(self._pairs)

    @property
    def lower(self) -> np.ndarray:
        return np.concatenate([np.full(self.num_slots, -1.0), np.full(len(self._pairs), -self.scale_range)])

    @property
    def upper(self) -> np.ndarray:
        return np.concatenate([np.full(self.num_slots, 1.0), np.full(len(self._pairs), self.scale_range)])

    @property
    def discrete_steps(self) -> np.ndarray:
        """Per coordinate, its discretisation step for optimizers that respect it (CMA-ES with
        Margin): inclusion values are binary ({-1, 1}, step 2), log-scales continuous (0)."""
        return np.concatenate([np.full(self.num_slots, 2.0), np.zeros(len(self._pairs))])

    def initial(self) -> np.ndarray:
        """One source's layers in order (first repeat), every scale 1."""
        path = [[self.init_source, l] for l in range(self.num_layers[self.init_source])]
        return self.encode(path)

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        x = self._check_vector(x)
        slots = self.select_slots(x[: self.num_slots])
        path = [list(self._layers[t % self.total_layers]) for t in slots]
        scales = [1.0]
        for prev, cur in zip(slots, slots[1:]):
            key = self._pair_key(prev % self.total_layers, cur % self.total_layers)
            scales.append(1.0 if key is None else float(2.0 ** x[self.num_slots + self._pair_index[key]]))
        return {
            "type": "dfs",
            "sources": list(self.sources),
            "path": [[int(s), int(l)] for s, l in path],
            "scales": scales,
            "slots": [int(t) for t in slots],
            "embed_source": self.embed_source,
            "head_source": self.head_source,
        }

    def labels(self) -> list[str]:
        names = [Path(s).name or s for s in self.sources]
        out = []
        for t in range(self.num_slots):
            s, l = self._layers[t % self.total_layers]
            out.append(f"use {names[s]}.L{l} r{t // self.total_layers}")
        for a, b in self._pairs:
            if self.scaling == "source_pair":
                out.append(f"W {names[a]}->{names[b]}")
            else:
                (sa, la), (sb, lb) = self._layers[a], self._layers[b]
                out.append(f"W {names[sa]}.L{la}->{names[sb]}.L{lb}")
        return out

    # -- the rules, exposed for plots, tests and seeding ------------------------------------

    def select_slots(self, inclusion: np.ndarray) -> list[int]:
        """Slot indices on the path, in order, after the max/min length rules."""
        inclusion = np.asarray(inclusion, dtype=np.float64)
        order = np.argsort(-inclusion, kind="stable")  # largest first; ties: earlier slot first
        n_on = int((inclusion > 0).sum())
        keep = min(max(n_on, self.min_length), self.max_length)
        return sorted(int(t) for t in order[:keep])

    def encode(self, path: Sequence[Sequence[int]], scales: Sequence[float] | None = None) -> np.ndarray:
        """A vector that decodes to `path` (and `scales`): the inverse of `decode`, for seeding.

        Each path layer takes the first matching slot after the previous one; a path that
        does not fit in the repeated sequence, or scales the genome cannot express, raise.
        """
        if not self.min_length <= len(path) <= self.max_length:
            raise DFSError(f"path of {len(path)} layers breaks the length limits "
                           f"[{self.min_length}, {self.max_length}]")
        x = np.zeros(self.dim)
        x[: self.num_slots] = -self.init_margin
        slot = -1
        slots = []
        for position, (src, layer) in enumerate(path):
            target = self._global_index(int(src), int(layer))
            slot = next((t for t in range(slot + 1, self.num_slots) if t % self.total_layers == target), None)
            if slot is None:
                raise DFSError(f"path position {position} ({src}, {layer}) does not fit in "
                               f"{self.repeats} repeats of the layer sequence")
            slots.append(slot)
            x[slot] = self.init_margin
        if scales is not None:
            self._encode_scales(x, slots, scales)
        return x

    def _encode_scales(self, x: np.ndarray, slots: list[int], scales: Sequence[float]) -> None:
        if len(scales) != len(slots):
            raise DFSError(f"{len(scales)} scales for a path of {len(slots)} layers")
        if abs(float(scales[0]) - 1.0) > 1e-12:
            raise DFSError("the first path position takes the embeddings unscaled (scale 1)")
        written: dict[int, float] = {}
        for p in range(1, len(slots)):
            value = float(np.log2(float(scales[p])))
            key = self._pair_key(slots[p - 1] % self.total_layers, slots[p] % self.total_layers)
            if key is None:
                if abs(value) > 1e-12:
                    raise DFSError("scaling='none' cannot express scales other than 1")
                continue
            k = self._pair_index[key]
            if k in written and abs(written[k] - value) > 1e-9:
                raise DFSError(f"path uses W entry {self.labels()[self.num_slots + k]!r} with two different scales")
            if abs(value) > self.scale_range:
                raise DFSError(f"scale {scales[p]} outside [2^-{self.scale_range}, 2^{self.scale_range}]")
            written[k] = value
            x[self.num_slots + k] = value

    # -- internals ----------------------------------------------------------------------

    def _scale_pairs(self) -> list[tuple[int, int]]:
        if self.scaling == "none":
            return []
        if self.scaling == "source_pair":
            n = len(self.num_layers)
            return [(a, b) for a in range(n) for b in range(n)]
        m = self.total_layers
        if self.repeats == 1:  # the path only moves forward through one sequence
            pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
        else:
            pairs = [(i, j) for i in range(m) for j in range(m)]
        return [(i, j) for i, j in pairs if self.scale_own_order or not self._own_order(i, j)]

    def _own_order(self, g_prev: int, g_cur: int) -> bool:
        """Layer l to layer l + 1 of the same source: the wiring the source was trained with."""
        return g_cur == g_prev + 1 and self._layers[g_prev][0] == self._layers[g_cur][0]

    def _pair_key(self, g_prev: int, g_cur: int) -> tuple[int, int] | None:
        if self.scaling == "none" or (not self.scale_own_order and self._own_order(g_prev, g_cur)):
            return None
        if self.scaling == "source_pair":
            return self._layers[g_prev][0], self._layers[g_cur][0]
        return g_prev, g_cur

    def _global_index(self, src: int, layer: int) -> int:
        if not 0 <= src < len(self.num_layers) or not 0 <= layer < self.num_layers[src]:
            raise DFSError(f"no layer {layer} in source {src}")
        return sum(self.num_layers[:src]) + layer

    def _check_vector(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.dim:
            raise DFSError(f"DFS genome has {self.dim} coordinates, got {x.shape[0]}")
        if not np.all(np.isfinite(x)):
            raise DFSError("DFS genome has non-finite values")
        # the optimizer respects the bounds; clipping keeps hand-made vectors in the documented range
        return np.clip(x, self.lower, self.upper)


def source_depth(model: Any) -> int:
    """Decoder layer count of a source: a checkpoint folder (config.json) or a model in memory."""
    config = getattr(model, "config", None)
    if config is not None:
        return int(config.get_text_config(decoder=True).num_hidden_layers)
    # counted from the checkpoint's tensor names: configs may leave num_hidden_layers at its
    # default (llava-hf's LLaVA-1.6 text_config does)
    from evomm.adapters import checkpoint_layers
    from evomm.errors import EvommError

    path = Path(str(model))
    if not (path / "config.json").is_file():
        raise ConfigError(f"dfs: {model}: no config.json (a DFS source must be a transformers checkpoint folder)")
    try:
        depth = checkpoint_layers(path)
    except EvommError as exc:
        raise ConfigError(f"dfs: {model}: {exc}") from None
    if not depth:
        raise ConfigError(f"dfs: {model}: no decoder layers (layers.N tensors) in the checkpoint")
    return int(depth)


def build_space(models: Sequence[Any], *, num_layers: Sequence[int] | None = None, **options: Any) -> DFSSpace:
    """A `DFSSpace` over `models` (checkpoint paths or models in memory) from config options.

    `num_layers` may be given to skip reading the sources; other options are `DFSSpace`'s.
    """
    if num_layers is None:
        num_layers = [source_depth(m) for m in models]
    elif len(num_layers) != len(models):
        raise ConfigError(f"dfs: num_layers has {len(num_layers)} entries for {len(models)} models")
    names = [str(m) if isinstance(m, (str, os.PathLike))
             else getattr(getattr(m, "config", None), "_name_or_path", "") or f"source{i}"
             for i, m in enumerate(models)]
    try:
        return DFSSpace(num_layers, names, **options)
    except TypeError as exc:  # an unknown option in the YAML
        raise ConfigError(f"dfs space: {exc}") from None
