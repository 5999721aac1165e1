"""PS candidates in memory: plan a recipe's merge once, then write each candidate in place.

The search decodes every genome into an ordinary recipe. All recipes of a stage share the
models, the method and the layout, so the merge planner (`evomm.merge.plan`) runs once, on
the first recipe; the source tensors are read once; and each candidate only resolves its
per-tensor parameters (`resolve_parameters`, the same code `evomm merge` uses) and lets
`CandidateMaterializer` write the merged tensors into preallocated targets. What `evomm merge`
would write for a recipe is what lands in the targets here.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from evomm.errors import ConfigError


class PSCandidates:
    """Materialise PS recipes over fixed sources into `target` tensors (by checkpoint name).

    `target=None` allocates float32 tensors for the merged tensors only (enough for fitness
    functions that look at weights); a fitness that runs a model passes its parameters, keyed
    by the primary checkpoint's tensor names. `compile` is passed to the materialiser.
    """

    def __init__(self, recipe: Mapping[str, Any], target: Mapping[str, torch.Tensor] | None = None,
                 *, compile: bool | None = False) -> None:
        from evomm.merge.candidate import CandidateMaterializer, routes_from_tasks
        from evomm.merge.plan import build_plan, open_models
        from evomm.merge.recipe import Recipe

        template = Recipe.from_dict(dict(recipe), source="candidate recipe")
        models = open_models(template)
        try:
            self.plan = build_plan(template, models)
            routes = routes_from_tasks(self.plan.tasks, self.plan.primary)
            if target is None:
                routes = {name: r for name, r in routes.items() if r.merge}
                target = {name: torch.empty(_task(self.plan, name).shape, dtype=torch.float32) for name in routes}
            sources = {
                ref: {route.inputs[ref]: model.source.get(route.inputs[ref]) for route in routes.values()
                      if ref in route.inputs}
                for ref, model in models.items()
            }
            self.materializer = CandidateMaterializer(
                target, sources, routes, template.merge_method, base=template.base_model,
                merged=[ref for ref in template.input_models()
                        if not (template.method.needs_base and ref == template.base_model)],
                compile=compile,
            )
        finally:
            for model in models.values():
                model.source.close()
        self.target = target
        self.method = template.merge_method
        self.models = template.input_models()
        self._tasks = [t for t in self.plan.tasks if t.merge and t.name in self.materializer.merged_names]

    @property
    def merged_names(self) -> list[str]:
        return [t.name for t in self._tasks]

    def apply(self, recipe: Mapping[str, Any]) -> None:
        """Write the candidate `recipe` into the targets (same models and method as the template)."""
        from evomm.merge.recipe import Recipe
        from evomm.merge.resolve import resolve_parameters

        rec = Recipe.from_dict(dict(recipe), source="candidate recipe")
        if rec.merge_method != self.method or rec.input_models() != self.models:
            raise ConfigError("candidate recipe merges other models or another method than the search space")
        params = {t.name: resolve_parameters(rec, t.name, t=t.t, model_names=t.inputs) for t in self._tasks}
        self.materializer.materialize(params, seed=rec.evomm.seed)


def _task(plan, name: str):
    for task in plan.tasks:
        if task.name == name:
            return task
    raise KeyError(name)
