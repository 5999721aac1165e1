"""Plan a merge before running it: which output tensors, from which source tensors, how.

Planning reads only headers and config files. It checks everything that can be checked
without arithmetic (architectures, missing tensors, shapes, tokenizers) so a bad merge fails
in seconds with one clear line, before any output is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from evomm.adapters import Adapter, Slot, adapter_for
from evomm.errors import ArchitectureError, ConfigError, MissingTensorError, ShapeMismatchError
from evomm.io import TensorSource, open_source, resolve_model_path
from evomm.merge.recipe import Recipe



@dataclass
class ModelInput:
    """One opened model of the recipe."""

    ref: str
    path: Path
    source: TensorSource
    adapter: Adapter

    @property
    def text_model_type(self) -> str | None:
        config = self.source.config or {}
        return (config.get("text_config") or {}).get("model_type") or (
            config.get("model_type") if self.adapter.kind == "llm" else None)


@dataclass
class TensorTask:
    """How to make one output tensor."""

    name: str
    shape: tuple[int, ...]
    slot: Slot
    t: float
    merge: bool  # False: copied unchanged from the primary model
    inputs: dict[str, str] = field(default_factory=dict)  # model ref -> its tensor name
    rows: int | None = None  # vocab tensors: merge only the first `rows` rows
    segment: int | None = None  # `slices:` recipes: the slice whose recipe merges this tensor


@dataclass
class MergePlan:
    recipe: Recipe
    models: dict[str, ModelInput]  # in merge order
    primary: str  # the model whose layout, config and unmerged parts the output takes
    tasks: list[TensorTask]
    architecture: str
    num_layers: int | None = None  # output layer count when `slices:` stack layers

    def recipe_for(self, task: TensorTask) -> Recipe:
        """The recipe that merges `task`: its slice's for a stacked `slices:` recipe."""
        return self.recipe if task.segment is None else self.recipe.segments[task.segment].recipe

    @property
    def primary_input(self) -> ModelInput:
        return self.models[self.primary]


def open_models(recipe: Recipe, allow_pickle: bool = False, base_dir: Path | None = None) -> dict[str, ModelInput]:
    """Resolve and open every model the recipe references (lazily: headers only)."""
    models = {}
    for ref in recipe.input_models():
        path = resolve_model_path(ref, base_dir)
        source = open_source(path, allow_pickle=allow_pickle, name=ref)
        models[ref] = ModelInput(ref, path, source, adapter_for(source))
    return models


def _choose_primary(recipe: Recipe, models: dict[str, ModelInput]) -> str:
    keep = recipe.evomm.keep_from
    if keep is not None:
        if keep not in models:
            raise ConfigError(f"evomm.keep_from: {keep!r} is not one of the recipe's models")
        return keep
    vlms = [ref for ref, m in models.items() if m.adapter.kind == "vlm"]
    if vlms:
        return vlms[0]
    return recipe.base_model if recipe.base_model is not None else next(iter(models))


def _check_architectures(recipe: Recipe, models: dict[str, ModelInput], primary: str,
                         same_depth: bool = True) -> str:
    kinds = {ref: m.adapter.kind for ref, m in models.items()}
    families = {"sdxl_unet" if k == "sdxl_unet" else "decoder" for k in kinds.values()}
    if len(families) > 1:
        desc = ", ".join(f"{ref} is {kind}" for ref, kind in kinds.items())
        raise ArchitectureError(f"mismatched architectures: {desc}")
    wanted = recipe.evomm.architecture
    has_vlm = "vlm" in kinds.values()
    mixed = has_vlm and "llm" in kinds.values()
    if families == {"sdxl_unet"}:
        arch = "sdxl_unet"
    else:
        arch = "llava_x_llm" if mixed else ("vlm" if has_vlm else "llm")
    accepted = {arch} | ({"llava_x_llm"} if has_vlm else set())
    if wanted != "auto" and wanted not in accepted:
        desc = ", ".join(f"{r}: {k}" for r, k in kinds.items())
        raise ArchitectureError(f"evomm.architecture is {wanted} but the models are {arch} ({desc})")
    if mixed and models[primary].adapter.kind != "vlm":
        raise ConfigError("evomm.keep_from: must name the VLM when merging a VLM with plain LLMs")
    types = {ref: m.text_model_type for ref, m in models.items() if m.text_model_type}
    if len(set(types.values())) > 1:
        desc = ", ".join(f"{r} is {t}" for r, t in types.items())
        raise ArchitectureError(f"mismatched architectures: {desc}")
    layers = {ref: m.adapter.num_layers for ref, m in models.items()}
    if same_depth and len(set(layers.values())) > 1:
        desc = ", ".join(f"{r} has {n}" for r, n in layers.items())
        raise ArchitectureError(f"mismatched architectures: different numbers of layer groups ({desc})")
    return arch


def _ties_embeddings(model: ModelInput, slot: Slot) -> bool:
    """A model with tied embeddings stores no lm_head: its embedding matrix is the head."""
    if slot != Slot("text", None, "lm_head.weight"):
        return False
    config = model.source.config or {}
    text = config.get("text_config") or {}
    return bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))


def build_plan(recipe: Recipe, models: dict[str, ModelInput]) -> MergePlan:
    """Check the models against each other and list one task per output tensor."""
    primary = _choose_primary(recipe, models)
    segments = recipe.segments
    stacked = segments is not None and (len(segments) > 1 or any(
        (start, end) != (0, models[ref].adapter.num_layers) for ref, (start, end) in recipe._layer_ranges.items()))
    arch = _check_architectures(recipe, models, primary, same_depth=not stacked)
    if stacked:
        return _build_stacked_plan(recipe, models, primary, arch)
    prim = models[primary]
    tasks = []
    for name in prim.source.keys():
        slot = prim.adapter.slot_of(name)
        shape = prim.source.shape(name)
        t = prim.adapter.layer_t(name)
        merged = slot.component in prim.adapter.merged_components and prim.source.dtype(name).is_floating_point
        if not merged:
            tasks.append(TensorTask(name, shape, slot, t, merge=False))
            continue
        inputs, rows = {}, shape[0] if shape else None
        for ref, model in models.items():
            src_name = name if ref == primary else model.adapter.name_of(slot)
            if (src_name is None or src_name not in model.source) and _ties_embeddings(model, slot):
                src_name = model.adapter.name_of(Slot("text", None, "embed_tokens.weight"))
            if src_name is None or src_name not in model.source:
                raise MissingTensorError(f"missing tensor: {ref} has no {src_name or slot} "
                                         f"(needed for {name})")
            src_shape = model.source.shape(src_name)
            if src_shape != shape:
                vocab_row_diff = (slot.role in prim.adapter.vocab_roles and len(src_shape) == len(shape)
                                  and src_shape[1:] == shape[1:])
                if not vocab_row_diff:
                    raise ShapeMismatchError(f"mismatched shapes for {name}: {primary} has "
                                             f"{list(shape)}, {ref} has {list(src_shape)} ({src_name})")
                rows = min(rows, src_shape[0])
            inputs[ref] = src_name
        rows = None if rows == (shape[0] if shape else None) else rows
        tasks.append(TensorTask(name, shape, slot, t, merge=True, inputs=inputs, rows=rows))
    if not any(task.merge for task in tasks):
        raise ArchitectureError(f"{primary}: nothing to merge (no {', '.join(prim.adapter.merged_components)} tensors)")
    return MergePlan(recipe, models, primary, tasks, arch)


def _merge_inputs(models: dict[str, ModelInput], refs: list[str], slots: dict[str, Slot], out_name: str,
                  shape: tuple[int, ...], vocab_role: bool) -> tuple[dict[str, str], int | None]:
    """Each model's name for its slot, checked against the output shape (vocab rows may differ)."""
    inputs, rows = {}, shape[0] if shape else None
    for ref in refs:
        model = models[ref]
        name = model.adapter.name_of(slots[ref])
        if (name is None or name not in model.source) and _ties_embeddings(model, slots[ref]):
            name = model.adapter.name_of(Slot("text", None, "embed_tokens.weight"))
        if name is None or name not in model.source:
            raise MissingTensorError(f"missing tensor: {ref} has no {name or slots[ref]} (needed for {out_name})")
        src_shape = model.source.shape(name)
        if src_shape != shape:
            if not (vocab_role and len(src_shape) == len(shape) and src_shape[1:] == shape[1:]):
                raise ShapeMismatchError(f"mismatched shapes for {out_name}: {list(shape)} vs {ref}'s "
                                         f"{list(src_shape)} ({name})")
            rows = min(rows, src_shape[0])
        inputs[ref] = name
    return inputs, (None if rows == (shape[0] if shape else None) else rows)


def _build_stacked_plan(recipe: Recipe, models: dict[str, ModelInput], primary: str, arch: str) -> MergePlan:
    """A `slices:` recipe that stacks layer ranges: one output layer per slice layer, in order.

    As mergekit: embeddings come from the first slice's sources, the other tensors outside the
    layers (final norm, head) from the last slice's (as many of them as the first slice has),
    both at t = 0; a slice's layer i of n sits at t = i/(n-1) (t = 1 when n = 1).
    """
    if arch not in ("llm", "vlm"):
        raise ConfigError(f"slices: stacking layer ranges is for decoder models; this recipe is {arch} "
                          "(use one slice over every layer, or models:)")
    segments = recipe.segments
    for i, segment in enumerate(segments):
        for ref, start in segment.starts.items():
            depth = models[ref].adapter.num_layers
            if start + segment.length > depth:
                raise ConfigError(f"slices[{i}]: layer_range [{start}, {start + segment.length}] of {ref} "
                                  f"is beyond its {depth} layers")
    prim = models[primary]
    pre, post, layer_roles = [], [], {}
    for name in prim.source.keys():
        slot = prim.adapter.slot_of(name)
        merged = slot.component in prim.adapter.merged_components and prim.source.dtype(name).is_floating_point
        if slot.layer is not None:
            if slot.component == "text":
                layer_roles.setdefault(slot.role, None)
            continue
        shape = prim.source.shape(name)
        if not merged:
            pre.append(TensorTask(name, shape, slot, 0.0, merge=False))
            continue
        first = slot.role == "embed_tokens.weight"
        index = 0 if first else len(segments) - 1
        refs = segments[index].recipe.input_models()
        if not first:  # mergekit pairs the last slice's sources with the first slice's count
            refs = refs[: len(segments[0].recipe.input_models())]
        inputs, rows = _merge_inputs(models, refs, {r: slot for r in refs}, name, shape,
                                     slot.role in prim.adapter.vocab_roles)
        (pre if first else post).append(TensorTask(name, shape, slot, 0.0, True, inputs, rows, segment=index))
    layers, out_layer = [], 0
    for index, segment in enumerate(segments):
        refs = segment.recipe.input_models()
        for j in range(segment.length):
            t = j / (segment.length - 1) if segment.length > 1 else 1.0
            for role in layer_roles:
                slots = {r: Slot("text", segment.starts.get(r, segment.starts[refs[0]]) + j, role) for r in refs}
                first = models[refs[0]]
                first_name = first.adapter.name_of(slots[refs[0]])
                if first_name is None or first_name not in first.source:
                    raise MissingTensorError(f"missing tensor: {refs[0]} has no {first_name}")
                shape = first.source.shape(first_name)
                out_name = prim.adapter.name_of(Slot("text", out_layer, role))
                inputs, rows = _merge_inputs(models, refs, slots, out_name, shape, False)
                layers.append(TensorTask(out_name, shape, Slot("text", out_layer, role), t, True, inputs, rows,
                                         segment=index))
            out_layer += 1
    return MergePlan(recipe, models, primary, pre + layers + post, arch, num_layers=out_layer)


def output_dtype(plan: MergePlan, task: TensorTask) -> torch.dtype:
    """The recipe's dtype for float tensors; everything else keeps its source dtype."""
    if task.name in plan.primary_input.source:
        src_dtype = plan.primary_input.source.dtype(task.name)
    else:  # a stacked layer the primary does not have: its first source's dtype
        ref, name = next(iter(task.inputs.items()))
        src_dtype = plan.models[ref].source.dtype(name)
    wanted = plan.recipe.output_dtype()
    if wanted is None or not src_dtype.is_floating_point:
        return src_dtype
    return getattr(torch, wanted)
