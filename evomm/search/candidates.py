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
    by the primary checkpoint's tensor names. `compile` and `storage_dtype` are passed to
    the materialiser, whose state lives where the targets are.
    """

    def __init__(self, recipe: Mapping[str, Any], target: Mapping[str, torch.Tensor] | None = None,
                 *, compile: bool | None = False, storage_dtype: torch.dtype = torch.float32) -> None:
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
                        if not (template.method.takes_base(template.base_model) and ref == template.base_model)],
                compile=compile, storage_dtype=storage_dtype,
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


def model_targets(model: torch.nn.Module, checkpoint_names: list[str]) -> dict[str, torch.Tensor]:
    """`model`'s tensors keyed by the checkpoint's names (on-disk and in-memory layouts differ,
    e.g. LLaVA in transformers 5): both sides are mapped to adapter slots and matched."""
    from evomm.adapters import adapter_for_names
    from evomm.merge.candidate import in_place_params

    live = in_place_params(model)
    disk = adapter_for_names(checkpoint_names, label="checkpoint")
    mem = adapter_for_names(list(live), label="model")
    out = {}
    for name in checkpoint_names:
        mem_name = name if name in live else mem.name_of(disk.slot_of(name))
        if mem_name is None or mem_name not in live:
            raise ConfigError(f"the model has no tensor for checkpoint tensor {name!r}")
        out[name] = live[mem_name]
    return out


class CandidateModel:
    """One model in memory that takes on each candidate, for fitness functions that run it.

    PS recipes: the primary checkpoint of the plan (the VLM for LLaVA x LLM merges) is loaded
    once and every candidate's merged weights are written into its parameters in place. DFS
    specs: the sources are loaded once and a DFS model over them is re-routed per candidate
    (a LLaVA embedding source stays a LLaVA with a DFS language model). `apply(spec)` returns
    the model, ready for forward / generate. `dtype` is the model's, and also the dtype the
    PS merge keeps its base and task vectors in (bfloat16: a third of float32's memory; the
    arithmetic is float32 either way).

    `merge_device`: where PS candidates are merged. Default: the evaluator's device, so a GPU
    evaluator merges on the GPU (state and model there, nothing crosses the bus per
    candidate); "cpu" keeps the merge state in host RAM and copies each candidate's merged
    tensors to the device (for GPUs too small for the state). `compile`: fuse each merge
    method with `torch.compile` (default: on a GPU try it, falling back to eager; on the CPU
    eager, which needs no compiler warm-up).
    """

    def __init__(self, spec: Mapping[str, Any], device: str = "cpu", dtype: torch.dtype = torch.float32,
                 *, merge_device: str | None = None, compile: bool | None = None) -> None:
        self.kind = "dfs" if spec.get("type") == "dfs" else "ps"
        self.device = device
        if self.kind == "dfs":
            from evomm.models.dfs import DFSForCausalLM, dfs_into_llava
            from evomm.search.export import _is_llava, load_decoder_source

            self._sources = [load_decoder_source(p, dtype=dtype) for p in spec["sources"]]
            embed = int(spec.get("embed_source", 0))
            self._dfs = DFSForCausalLM.from_sources(
                self._sources, spec["path"], spec.get("scales"), embed_source=embed,
                head_source=spec.get("head_source"), source_names=[str(s) for s in spec["sources"]])
            host = self._sources[embed]
            self.model = dfs_into_llava(host, self._dfs) if _is_llava(host) else self._dfs
        else:
            from evomm.search.export import load_decoder_source

            from evomm.merge.plan import build_plan, open_models
            from evomm.merge.recipe import Recipe

            template = Recipe.from_dict(dict(spec), source="candidate recipe")
            models = open_models(template)
            try:
                plan = build_plan(template, models)
                primary_path, names = models[plan.primary].path, [t.name for t in plan.tasks]
            finally:
                for m in models.values():
                    m.source.close()
            self.model = load_decoder_source(primary_path, dtype=dtype)  # merged in float32, cast on write
            merge_device = torch.device(merge_device or device)
            if compile is None:
                compile = None if merge_device.type == "cuda" else False
            if merge_device == torch.device(device):
                self.model.to(device)
                self._ps = PSCandidates(spec, model_targets(self.model, names), compile=compile, storage_dtype=dtype)
                self._device_targets = None
            else:
                # merge into shadow tensors on merge_device, then copy the merged ones to the model
                live = model_targets(self.model, names)
                shadow = {name: t.detach().to(merge_device, copy=True) for name, t in live.items()}
                self._ps = PSCandidates(spec, shadow, compile=compile, storage_dtype=dtype)
                self.model.to(device)
                self._device_targets = model_targets(self.model, names)
        self.model.to(device).eval()

    def apply(self, spec: Mapping[str, Any]) -> torch.nn.Module:
        if (spec.get("type") == "dfs") != (self.kind == "dfs"):
            raise ConfigError("a candidate of another kind (PS vs DFS) than the first one")
        if self.kind == "dfs":
            from evomm.models.dfs import apply_spec

            apply_spec(self._dfs, dict(spec))
        else:
            self._ps.apply(spec)
            if self._device_targets is not None:
                with torch.no_grad():
                    for name in self._ps.merged_names:
                        self._device_targets[name].copy_(self._ps.target[name], non_blocking=True)
        return self.model
