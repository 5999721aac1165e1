"""Merging: methods on tensors (`methods`), in-memory candidates for the search (`candidate`)."""

from evomm.merge.candidate import CandidateMaterializer, Route, TensorParams, in_place_params, routes_from_tasks
from evomm.merge.methods import (
    METHODS,
    MethodSpec,
    dare_linear,
    dare_ties,
    linear,
    method_spec,
    slerp,
    task_arithmetic,
    tensor_seed,
    ties,
)

__all__ = [
    "CandidateMaterializer",
    "Route",
    "TensorParams",
    "in_place_params",
    "routes_from_tasks",
    "METHODS",
    "MethodSpec",
    "dare_linear",
    "dare_ties",
    "linear",
    "method_spec",
    "slerp",
    "task_arithmetic",
    "tensor_seed",
    "ties",
]
