"""The parameter-space (PS) genome: per-layer-group merge parameters as one flat vector.

A PS candidate is an ordinary mergekit-style recipe whose method parameters vary by layer.
The genome holds one real per (method parameter, model, tensor filter, layer group):

  weight   per model, box [weight_bounds] (default [0, 1]; task arithmetic often wants > 1)
  density  per model (ties, dare_ties, dare_linear, ...), box [density_min, 1], so never 0
  t        once (slerp), box [0, 1]
  others   every registered method's evolvable parameters, in the bounds the registry gives
           (`evomm.merge.methods.EVOLVABLE`: e.g. della's epsilon, breadcrumbs' gamma)

No squashing transform is needed: CMA-ES samples inside the box (its boundary handling maps
out-of-box samples back in) and `decode` clips as a guard against round-off. Layer groups are
`layers_per_group` consecutive layer indices (1 = one value per layer) or explicit `groups`
(e.g. the adapter's SDXL blocks). `filters` (tensor-name substrings such as "self_attn" and
"mlp", or "attn2.to_k" to set cross-attention K apart) give each filter its own values, with one
more set for the remaining tensors. `extra_filters` evolve one scalar each for tensors outside
the layer stack (e.g. "embed_tokens", "lm_head"); otherwise those follow mergekit's rule and
take the first layer's value. DARE methods get the fixed `seed` in the recipe's `evomm:`
section: every candidate uses the same drop masks, so fitness differences come from the
genome, and any candidate can be rebuilt exactly from its recipe.

`decode` expands the groups into per-layer gradient lists of length `num_layers`, so that under
mergekit's gradient interpolation every layer gets exactly its group's value and the recipe
means the same in `evomm merge` and in mergekit. With `smooth` it writes one value per group
instead, and mergekit's interpolation runs between the groups (mergekit-evolve's `smooth: true`).
`last_group_filters` names tensors outside the layer stack (e.g. the final norm and the head)
that take the *last* group's values rather than the first's, as mergekit-evolve's slices do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evomm.errors import ConfigError
from evomm.merge.methods import EVOLVABLE, METHODS, method_spec

#: method -> the parameters its PS genome evolves (every registered merge method)
METHOD_PARAMETERS: dict[str, tuple[str, ...]] = {m: tuple(bounds) for m, bounds in EVOLVABLE.items()}
NEEDS_BASE = frozenset(m for m, spec in METHODS.items() if spec.needs_base)
#: method-wide evolvable parameters (one value per layer group, not per model)
GLOBAL_PARAMETERS = frozenset({"t"})


def _spec(method: str):
    return method_spec(method)


REST = "*"


@dataclass
class PSSpace:
    """PS genome over `models` (recipe `model:` values) merged with `method`.

    `initial_values` sets the starting value of each parameter; the default is a uniform
    merge: weight 1/n for linear and 0.5 otherwise, density 0.5, t 0.5.
    """

    method: str
    models: list[str]
    num_layers: int
    base_model: str | None = None
    layers_per_group: int = 1
    groups: list[list[int]] | None = None
    filters: list[str] = field(default_factory=list)
    extra_filters: list[str] = field(default_factory=list)
    weight_bounds: tuple[float, float] = (0.0, 1.0)
    density_min: float = 0.05
    initial_values: dict[str, float] = field(default_factory=dict)
    fixed_parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    seed: int = 0
    evomm_options: dict[str, Any] = field(default_factory=dict)
    smooth: bool = False
    last_group_filters: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in METHOD_PARAMETERS:
            raise ConfigError(f"space.method: unknown method {self.method!r} (known: {sorted(METHOD_PARAMETERS)})")
        if not METHOD_PARAMETERS[self.method]:
            raise ConfigError(f"space.method: {self.method} has no per-model or per-layer parameter to evolve")
        if not self.models:
            raise ConfigError("space.models: name at least one model to merge")
        if _spec(self.method).needs_base and not self.base_model:
            raise ConfigError(f"space.base_model: method {self.method} needs a base model")
        if self.method == "slerp" and len([m for m in self.models if m != self.base_model]) != 1:
            raise ConfigError("space.models: slerp merges exactly one model into the base model")
        if self.num_layers < 1:
            raise ConfigError("space.num_layers: must be at least 1")
        lo, hi = self.weight_bounds
        if not lo < hi:
            raise ConfigError(f"space.weight_bounds: lower {lo} must be below upper {hi}")
        if not 0 < self.density_min <= 1:
            raise ConfigError("space.density_min: must be in (0, 1]")
        if self.groups is None:
            k = max(1, int(self.layers_per_group))
            self.groups = [list(range(s, min(s + k, self.num_layers))) for s in range(0, self.num_layers, k)]
        else:
            flat = sorted(i for g in self.groups for i in g)
            if flat != list(range(self.num_layers)):
                raise ConfigError(f"space.groups: must cover layers 0..{self.num_layers - 1} exactly once")
        self._coords = self._layout()
        self._lower = np.array([self._bounds(c[0])[0] for c in self._coords])
        self._upper = np.array([self._bounds(c[0])[1] for c in self._coords])

    # -- layout --------------------------------------------------------------------------------

    @property
    def merged_models(self) -> list[str]:
        """Models that get per-model parameters (slerp: the one that is not the base)."""
        if self.method == "slerp" or _spec(self.method).takes_base(self.base_model):
            return [m for m in self.models if m != self.base_model]
        return list(self.models)

    def _layout(self) -> list[tuple[str, str | None, str, int | None]]:
        """(parameter, model or None, filter, group index or None for extra filters)."""
        coords = []
        filters = list(self.filters) + [REST]
        for param in METHOD_PARAMETERS[self.method]:
            owners: list[str | None] = [None] if param in GLOBAL_PARAMETERS else list(self.merged_models)
            for model in owners:
                for extra in self.extra_filters:
                    coords.append((param, model, extra, None))
                for flt in filters:
                    for g in range(len(self.groups)):
                        coords.append((param, model, flt, g))
        return coords

    def _bounds(self, param: str) -> tuple[float, float]:
        if param == "weight":
            return float(self.weight_bounds[0]), float(self.weight_bounds[1])
        lo, hi = (float(v) for v in EVOLVABLE[self.method][param])
        if param == "density":
            return max(lo, float(self.density_min)), hi
        return lo, hi

    def _default_initial(self, param: str) -> float:
        if param in self.initial_values:
            return float(self.initial_values[param])
        if param == "weight":
            return 1.0 / len(self.merged_models) if self.method == "linear" else 0.5
        lo, hi = self._bounds(param)
        return 0.5 if lo <= 0.5 <= hi else (lo + hi) / 2

    # -- SearchSpace protocol --------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return len(self._coords)

    @property
    def lower(self) -> np.ndarray:
        return self._lower.copy()

    @property
    def upper(self) -> np.ndarray:
        return self._upper.copy()

    def initial(self) -> np.ndarray:
        x0 = np.array([self._default_initial(c[0]) for c in self._coords])
        return np.clip(x0, self._lower, self._upper)

    def labels(self) -> list[str]:
        out = []
        for param, model, flt, g in self._coords:
            who = "" if model is None else f"[{_short(model)}]"
            where = flt if g is None else f"{'' if flt == REST else flt + ':'}L{_span(self.groups[g])}"
            out.append(f"{param}{who} {where}")
        return out

    def encode(self, values: dict[str, float]) -> np.ndarray:
        """A genome with every coordinate of parameter `name` set to `values[name]` (uniform)."""
        x = self.initial()
        for j, (param, *_rest) in enumerate(self._coords):
            if param in values:
                x[j] = float(values[param])
        return np.clip(x, self._lower, self._upper)

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        x = np.clip(np.asarray(x, dtype=float), self._lower, self._upper)
        if x.shape != (self.dim,):
            raise ValueError(f"genome has shape {x.shape}, expected ({self.dim},)")
        settings: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
        per_layer: dict[tuple[str, str | None, str], list[float]] = {}
        for value, (param, model, flt, g) in zip(x, self._coords):
            key = (param, model)
            settings.setdefault(key, [])
            if g is None:
                settings[key].append({"filter": flt, "value": float(value)})
                continue
            if self.smooth:  # one anchor per group; mergekit interpolates between them
                per_layer.setdefault((param, model, flt), [0.0] * len(self.groups))[g] = float(value)
                continue
            layers = per_layer.setdefault((param, model, flt), [0.0] * self.num_layers)
            for layer in self.groups[g]:
                layers[layer] = float(value)
        for (param, model), entries in settings.items():
            for name in self.last_group_filters:
                flt = next((f for f in self.filters if f in name), REST)
                if (param, model, flt) in per_layer:
                    entries.append({"filter": name, "value": per_layer[(param, model, flt)][-1]})
        for (param, model, flt), layers in per_layer.items():
            entry: dict[str, Any] = {"value": layers} if flt == REST else {"filter": flt, "value": layers}
            settings[(param, model)].append(entry)
        recipe: dict[str, Any] = {"merge_method": self.method}
        if self.base_model:
            recipe["base_model"] = self.base_model
        models = []
        for model in self.models:
            params = {p: _simplify(settings[(p, m)]) for (p, m) in settings if m == model}
            models.append({"model": model, "parameters": params} if params else {"model": model})
        recipe["models"] = models
        top = dict(self.fixed_parameters)
        if ("t", None) in settings:
            top["t"] = _simplify(settings[("t", None)])
        for (param, model), entries in settings.items():  # other method-wide evolved parameters
            if model is None and param != "t":
                top[param] = _simplify(entries)
        if top:
            recipe["parameters"] = top
        if self.dtype:
            recipe["dtype"] = self.dtype
        section = dict(self.evomm_options)
        if _spec(self.method).uses_seed:
            section["seed"] = int(self.seed)  # DARE's drop masks: fixed, so any candidate can be rebuilt
        if section:
            recipe["evomm"] = section
        return recipe

    # -- for plots ---------------------------------------------------------------------------------

    def layer_table(self, x: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Rows "param[model] filter" x columns layers: the genome as a heatmap matrix."""
        x = np.clip(np.asarray(x, dtype=float), self._lower, self._upper)
        rows: dict[str, np.ndarray] = {}
        for value, (param, model, flt, g) in zip(x, self._coords):
            if g is None:
                continue
            name = f"{param}{'' if model is None else '[' + _short(model) + ']'}{'' if flt == REST else ' ' + flt}"
            row = rows.setdefault(name, np.zeros(self.num_layers))
            row[self.groups[g]] = value
        return list(rows), np.stack(list(rows.values()))


def _simplify(entries: list[dict[str, Any]]) -> Any:
    """A lone unfiltered gradient list is written as the plain list, as mergekit users write it."""
    if len(entries) == 1 and "filter" not in entries[0]:
        return entries[0]["value"]
    return entries


def _short(model: str) -> str:
    return model.rstrip("/").split("/")[-1]


def _span(group: list[int]) -> str:
    return str(group[0]) if len(group) == 1 else f"{group[0]}-{group[-1]}"
