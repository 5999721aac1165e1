"""Resolve every method parameter for one tensor, exactly as mergekit does.

`resolve_parameters(recipe, tensor_name, adapter)` is public and cheap: `evomm merge` calls it
once per output tensor, and the in-memory search reuses it for every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evomm.errors import ConfigError
from evomm.merge.recipe import ConditionalValue, Recipe


@dataclass
class ResolvedParameters:
    """Per-model values (keyed by model reference, in merge order) and method-wide values."""

    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    global_: dict[str, Any] = field(default_factory=dict)


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """A parameter setting's value for one tensor at gradient position t (None: no match).

    Numeric lists interpolate linearly between neighbours at t*(n-1); lists of bools or
    strings pick the entry at int(t*(n-1)); filter lists take the first matching entry.
    """
    if isinstance(setting, ConditionalValue):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if not isinstance(setting, list) or not setting:
        return None
    if isinstance(setting[0], ConditionalValue):
        for cond in setting:
            if cond.filter is None or cond.filter == "*" or (tensor_name and cond.filter in tensor_name):
                return evaluate_setting(cond.value, tensor_name, t)
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
        return setting[int(t * (len(setting) - 1))]
    scaled = t * (len(setting) - 1)
    i0 = int(scaled)
    i1 = min(len(setting) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * setting[i0] + frac * setting[i1]


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Give a value the type of its parameter (mergekit validates to the declared type)."""
    kind = type(default) if default is not None else float
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1"):
                    return True
                if value.lower() in ("false", "no", "0"):
                    return False
                raise ValueError
            return bool(value)
        if kind is int:
            return int(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"parameters.{name}: {value!r} is not a valid {kind.__name__}") from None


class ParameterResolver:
    """Recipe settings pre-sorted by precedence, so each lookup is a few dict reads."""

    def __init__(self, recipe: Recipe):
        info = recipe.method
        self.info = info
        self.refs = recipe.input_models()
        top = recipe.parameters or {}
        self.global_settings = {p: top[p] for p in info.global_params if p in top}
        self.model_settings: dict[str, list[tuple[str, list[Any]]]] = {}
        for ref in self.refs:
            if info.takes_base(recipe.base_model) and ref == recipe.base_model:
                names = [p for p in info.model_params if p in info.base_params]
            else:
                names = list(info.model_params)
            entry = recipe.model_entry(ref)
            own = (entry.parameters or {}) if entry else {}
            self.model_settings[ref] = [
                (p, [s[p] for s in (own, top) if p in s]) for p in names
            ]

    def resolve(self, tensor_name: str, t: float, model_names: dict[str, str] | None = None) -> ResolvedParameters:
        defaults = self.info.defaults
        out = ResolvedParameters()
        for name in self.info.global_params:
            value = None
            if name in self.global_settings:
                value = evaluate_setting(self.global_settings[name], tensor_name, t)
            if value is not None:
                out.global_[name] = _coerce(name, value, defaults.get(name))
            elif name in defaults:
                out.global_[name] = defaults[name]
        for ref, params in self.model_settings.items():
            own_name = model_names.get(ref, tensor_name) if model_names else tensor_name
            values = {}
            for name, settings in params:
                value = None
                for setting in settings:
                    value = evaluate_setting(setting, own_name, t)
                    if value is not None:
                        break
                if value is None:
                    if name not in defaults:
                        raise ConfigError(f"parameter {name!r} has no value for {ref} at tensor "
                                          f"{own_name} (no filter matched and it has no default)")
                    value = defaults[name]
                else:
                    value = _coerce(name, value, defaults.get(name))
                values[name] = value
            out.per_model[ref] = values
        return out


def resolver_for(recipe: Recipe) -> ParameterResolver:
    """The recipe's cached resolver (recipes are treated as immutable once validated)."""
    if recipe._resolver is None:
        recipe._resolver = ParameterResolver(recipe)
    return recipe._resolver


def resolve_parameters(recipe: Recipe, tensor_name: str, adapter=None, *, t: float | None = None,
                       model_names: dict[str, str] | None = None) -> ResolvedParameters:
    """Every parameter of the recipe's method for `tensor_name`.

    `t` (the gradient position) defaults to `adapter.layer_t(tensor_name)`; `model_names` maps a
    model reference to its own name for the tensor when layouts differ (filters of per-model
    parameters match that name, as mergekit's do).
    """
    if t is None:
        t = adapter.layer_t(tensor_name) if adapter is not None else 0.0
    return resolver_for(recipe).resolve(tensor_name, t, model_names)
