"""The recipe's view of the merge-method registry (`evomm.merge.methods.METHODS`).

The registry holds the arithmetic (plain functions on float32 tensors). This module answers
what a recipe needs to know about a method (its YAML parameter names, which are per model,
defaults, whether it needs a base) and calls the function with a tensor's resolved
parameters, so planning and arithmetic stay apart.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import torch

from evomm.errors import ConfigError

# accepted for mergekit compatibility; they do not change the result
NO_OP_GLOBALS = {"int8_mask": False}
# YAML name -> the function's argument name, where they differ
_ARG_NAMES = {"weight": "weights", "density": "densities", "lambda": "lambda_"}


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: Callable[..., torch.Tensor]
    needs_base: bool
    model_params: tuple[str, ...]
    global_params: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    base_params: tuple[str, ...] = ()  # per-model params that also apply to the base
    exact_inputs: int | None = None  # slerp: base + one other

    def apply(self, tensors: dict[str, torch.Tensor], base_ref: str | None, params, seed: int) -> torch.Tensor:
        """Run the method on one tensor group (float32) with `resolve_parameters` output."""
        sig = _signature(self.fn)
        if self.needs_base:
            base = tensors[base_ref]
            refs = [r for r in tensors if r != base_ref]
        else:
            base, refs = None, list(tensors)
        kwargs: dict[str, Any] = {}
        for name, value in params.global_.items():
            arg = _arg(name, sig)
            if arg is not None:
                kwargs[arg] = value
        for name in self.model_params:
            arg = _arg(name, sig)
            if arg is not None:
                kwargs[arg] = [params.per_model[r][name] for r in refs]
        if "seed" in sig and "seed" not in kwargs:
            kwargs["seed"] = seed
        if self.exact_inputs == 2 and self.needs_base and "tensors" not in sig:  # slerp(a, b, t)
            return self.fn(base, tensors[refs[0]], **kwargs)
        others = [tensors[r] for r in refs]
        if base is not None:
            return self.fn(base, others, **kwargs)
        return self.fn(others, **kwargs)


@lru_cache(maxsize=None)
def _signature(fn: Callable) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)


def _arg(name: str, sig: tuple[str, ...]) -> str | None:
    for candidate in (name, _ARG_NAMES.get(name), name + "_", name + "s"):
        if candidate and candidate in sig:
            return candidate
    return None


def _registry() -> dict[str, Any]:
    from evomm.merge.methods import METHODS

    return METHODS


def known_methods() -> list[str]:
    return sorted(_registry())


def _get(spec: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if isinstance(spec, dict) and name in spec:
            return spec[name]
        if hasattr(spec, name):
            return getattr(spec, name)
    return default


@lru_cache(maxsize=None)
def method_info(name: str) -> MethodInfo:
    registry = _registry()
    if name not in registry:
        raise ConfigError(f"merge_method: unknown merge method {name!r} (known: {', '.join(sorted(registry))})")
    spec = registry[name]
    fn = _get(spec, "fn", "function", "func")
    model_params = tuple(_get(spec, "model_params", "per_model", "per_model_params", default=()))
    global_params = tuple(_get(spec, "global_params", "globals", "global_param_names", default=()))
    defaults = dict(_get(spec, "defaults", default={}) or {})
    for extra, value in NO_OP_GLOBALS.items():
        if _get(spec, "needs_base", default=False) and extra not in global_params and name != "slerp":
            global_params += (extra,)
            defaults.setdefault(extra, value)
    exact = 2 if name == "slerp" else _get(spec, "exact_inputs", "num_inputs", default=None)
    return MethodInfo(name=name, fn=fn, needs_base=bool(_get(spec, "needs_base", default=False)),
                      model_params=model_params, global_params=global_params, defaults=defaults,
                      exact_inputs=exact)
