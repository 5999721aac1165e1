"""The recipe's view of the merge-method registry (`evomm.merge.methods.METHODS`).

The registry holds the arithmetic (plain functions on float32 tensors) and binds parameters
by their mergekit names. This module adds what a recipe needs on top: which YAML names are
per model and which are method-wide (mergekit-compatibility names included), and calling a
method on one tensor group with the values `resolve_parameters` found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from evomm.errors import ConfigError


@dataclass(frozen=True)
class MethodInfo:
    name: str
    spec: Any  # evomm.merge.methods.MethodSpec
    needs_base: bool
    model_params: tuple[str, ...]  # per model, also settable at the top level as a fallback
    global_params: tuple[str, ...]  # method-wide: top level only
    defaults: dict[str, Any] = field(default_factory=dict)
    base_params: tuple[str, ...] = ()  # per-model params resolved for the base model too
    ignored_model_params: tuple[str, ...] = ()  # mergekit names accepted per model, no effect
    min_models: int = 1  # merged models besides the base
    max_models: int | None = None
    base_optional: bool = False  # a base_model, when given, is the base (not merged)

    def takes_base(self, base_model: str | None) -> bool:
        return self.needs_base or (self.base_optional and base_model is not None)

    @property
    def exact_inputs(self) -> int | None:
        """Models including the base, when the method fixes it (slerp: 2)."""
        if self.max_models is not None and self.max_models == self.min_models:
            return self.max_models + int(self.needs_base)
        return None

    def apply(self, tensors: dict[str, torch.Tensor], base_ref: str | None, params, seed: int,
              tensor_name: str) -> torch.Tensor:
        """Run the method on one tensor group (float32) with `resolve_parameters` output.

        `seed` is the merge-wide seed; DARE methods derive the tensor's own seed from it
        and `tensor_name` exactly as the in-memory candidates do.
        """
        from evomm.merge.methods import tensor_seed

        if self.takes_base(base_ref):
            base = tensors[base_ref]
            refs = [r for r in tensors if r != base_ref]
        else:
            base, refs = None, list(tensors)
        per_model = {p: [params.per_model[r][p] for r in refs] for p in self.spec.per_model_params}
        global_ = {p: v for p, v in params.global_.items() if p in self.global_params}
        tseed = tensor_seed(seed, tensor_name) if self.spec.uses_seed else None
        return self.spec(base, [tensors[r] for r in refs], per_model, global_, seed=tseed)


# parameters mergekit binds per model (the rest are method-wide)
_MERGEKIT_PER_MODEL = {"weight", "density", "gamma", "epsilon"}


def _registry() -> dict[str, Any]:
    from evomm.merge.methods import METHODS

    return METHODS


def known_methods() -> list[str]:
    return sorted(_registry())


@lru_cache(maxsize=None)
def method_info(name: str) -> MethodInfo:
    registry = _registry()
    if name not in registry:
        raise ConfigError(f"merge_method: unknown merge method {name!r} (known: {', '.join(sorted(registry))})")
    spec = registry[name]
    compat = dict(spec.compat_params)
    model_params = tuple(spec.per_model_params)
    # compatibility names (int8_mask, rescale...) are accepted where mergekit accepts them; the
    # registry checks their values when they reach it as method-wide parameters
    ignored = tuple(p for p in compat if p in _MERGEKIT_PER_MODEL)
    global_params = tuple(spec.global_params) + tuple(p for p in compat if p not in ignored)
    defaults = dict(spec.defaults)
    for p, allowed in compat.items():
        if isinstance(allowed, (bool, int, float, str)):
            defaults.setdefault(p, allowed)
    return MethodInfo(name=name, spec=spec, needs_base=spec.needs_base, model_params=model_params,
                      global_params=global_params, defaults=defaults, ignored_model_params=ignored,
                      min_models=spec.min_models, max_models=spec.max_models,
                      base_optional=getattr(spec, "base_optional", False))
