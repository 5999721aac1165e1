"""Run a planned merge: stream tensors through the method into an atomic output folder.

One output tensor at a time: read its sources (memory-mapped), compute in float32, cast to
the recipe's dtype, append to the shard being written. Peak memory is a few tensors.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from evomm.errors import ConfigError
from evomm.io import (AUX_FILES, PlannedTensor, ShardedWriter, atomic_output_dir, copy_aux_files,
                      parse_size, resolve_model_path)
from evomm.merge.model_card import write_model_card
from evomm.merge.plan import MergePlan, TensorTask, build_plan, open_models, output_dtype
from evomm.merge.recipe import Recipe
from evomm.merge.resolve import resolve_parameters
from evomm.merge.tokenizer_check import check_tokenizers

log = logging.getLogger(__name__)

TOKENIZER_AUX = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
                 "spiece.model", "chat_template.json", "chat_template.jinja")


def merge_tensor(plan: MergePlan, task: TensorTask, device: str | torch.device = "cpu") -> torch.Tensor:
    """Compute one output tensor (float32, on `device`)."""
    prim = plan.primary_input.source
    if not task.merge:
        return prim.get(task.name)
    recipe = plan.recipe_for(task)
    tensors = {}
    for ref, name in task.inputs.items():
        tensor = plan.models[ref].source.get(name)
        if task.rows is not None:
            tensor = tensor[: task.rows]
        tensors[ref] = tensor.to(device=device, dtype=torch.float32)
    params = resolve_parameters(recipe, task.name, t=task.t, model_names=task.inputs)
    result = recipe.method.apply(tensors, recipe.base_model, params, recipe.evomm.seed, task.name)
    if task.rows is not None:
        extra = prim.get(task.name)[task.rows:].to(device=device, dtype=torch.float32)
        result = torch.cat([result, extra], dim=0)
    return result


def _weights_name(plan: MergePlan) -> tuple[str, int]:
    recipe = plan.recipe
    shard = parse_size(recipe.evomm.shard_size)
    layout = plan.primary_input.source.layout
    if layout == "diffusers":
        return "diffusion_pytorch_model.safetensors", shard
    if layout == "single_file":
        return "model.safetensors", 1 << 62  # a single-file checkpoint stays one file
    return "model.safetensors", shard


def check_plan_tokenizers(plan: MergePlan) -> None:
    """Merged embedding rows must mean the same tokens in every model."""
    if not plan.recipe.evomm.check_tokenizers or len(plan.models) < 2:
        return
    vocab_tasks = [t for t in plan.tasks if t.merge and t.slot.role in plan.primary_input.adapter.vocab_roles]
    if not vocab_tasks:
        return
    shared = min(t.rows if t.rows is not None else t.shape[0] for t in vocab_tasks)
    check_tokenizers({ref: m.source.root for ref, m in plan.models.items()}, shared)


def write_weights(plan: MergePlan, out_dir: Path, device: str = "cpu", progress: bool = True) -> None:
    weights_name, shard_bytes = _weights_name(plan)
    dtypes = [output_dtype(plan, task) for task in plan.tasks]
    writer = ShardedWriter(out_dir, [PlannedTensor(t.name, t.shape, d) for t, d in zip(plan.tasks, dtypes)],
                           weights_name=weights_name, max_shard_bytes=shard_bytes)
    try:
        with torch.no_grad():
            for task, dtype in tqdm(list(zip(plan.tasks, dtypes)), desc="merging", unit="tensor",
                                    disable=not progress):
                tensor = merge_tensor(plan, task, device)
                writer.write(task.name, tensor.to(dtype=dtype, device="cpu"))
        writer.close()
    finally:
        writer.abort()


def _tokenizer_folder(plan: MergePlan, base_dir: Path | None) -> Path | None:
    recipe = plan.recipe
    ref = recipe.evomm.tokenizer_source or recipe.tokenizer_source
    if ref is None:
        return None
    if ref == "base":
        ref = recipe.base_model
    if ref is None:
        raise ConfigError("tokenizer_source: 'base' needs a base_model")
    if ref in plan.models:
        return plan.models[ref].source.root
    return resolve_model_path(ref, base_dir)


def write_metadata(plan: MergePlan, out_dir: Path, base_dir: Path | None = None, title: str | None = None) -> None:
    """config.json, tokenizer/processor files, the recipe and the model card."""
    prim = plan.primary_input
    config = dict(prim.source.config or {})
    wanted = plan.recipe.output_dtype()
    if config and plan.num_layers is not None:
        config = _with_depth(config, plan)
    if config:
        if wanted is not None:
            for key in ("dtype", "torch_dtype"):
                if key in config or (key == "dtype" and plan.architecture != "sdxl_unet"):
                    config[key] = wanted
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if plan.architecture != "sdxl_unet":
        copy_aux_files(prim.source.root, out_dir, AUX_FILES)
        tok_folder = _tokenizer_folder(plan, base_dir)
        if tok_folder is not None and tok_folder != prim.source.root:
            copy_aux_files(tok_folder, out_dir, TOKENIZER_AUX)
    (out_dir / "evomm_recipe.yml").write_text(plan.recipe.to_yaml())
    write_model_card(plan, out_dir, title=title)


def _with_depth(config: dict, plan: MergePlan) -> dict:
    """The primary's config with the stacked output's layer count (and per-layer types)."""
    config = json.loads(json.dumps(config))
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    text["num_hidden_layers"] = plan.num_layers
    types = text.get("layer_types")
    if isinstance(types, list) and types:
        out = []
        for segment in plan.recipe.segments:
            start = next(iter(segment.starts.values()))
            out += [types[min(start + j, len(types) - 1)] for j in range(segment.length)]
        text["layer_types"] = out
    return config


def describe_plan(plan: MergePlan) -> str:
    """A short human-readable summary of a plan (what `evomm merge --dry-run` prints)."""
    prim = plan.primary_input
    merged = [t for t in plan.tasks if t.merge]
    lines = [f"architecture: {plan.architecture}; method: {plan.recipe.merge_method}",
             f"output layout, config and unmerged parts from: {plan.primary}"]
    for ref, model in plan.models.items():
        lines.append(f"  {ref}: {model.adapter.describe()}")
    lines.append(f"tensors: {len(merged)} merged, {len(plan.tasks) - len(merged)} copied")
    vocab = [t for t in merged if t.rows is not None]
    for t in vocab:
        lines.append(f"  {t.name}: first {t.rows} rows merged, rows {t.rows}..{t.shape[0] - 1} from {plan.primary}")
    groups = prim.adapter.layer_groups()
    lines.append(f"layer groups ({len(groups)}; a gradient list walks over these): {', '.join(groups)}")
    return "\n".join(lines)


def plan_merge(recipe: Recipe, *, allow_pickle: bool = False, base_dir: Path | None = None) -> MergePlan:
    """Open the models and plan + check the merge without computing anything."""
    models = open_models(recipe, allow_pickle=allow_pickle, base_dir=base_dir)
    plan = build_plan(recipe, models)
    check_plan_tokenizers(plan)
    return plan


def run_merge(recipe: Recipe, out_dir: str | Path, *, allow_pickle: bool = False, device: str = "cpu",
              base_dir: Path | None = None, progress: bool = True, overwrite: bool = False) -> Path:
    """Plan, check and run `recipe`, writing a loadable checkpoint to `out_dir` atomically."""
    if recipe.chat_template is not None:
        log.warning("chat_template: ignored by evomm merge (the tokenizer source's template is copied)")
    models = open_models(recipe, allow_pickle=allow_pickle, base_dir=base_dir)
    try:
        plan = build_plan(recipe, models)
        check_plan_tokenizers(plan)
        with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
            write_weights(plan, tmp, device=device, progress=progress)
            write_metadata(plan, tmp, base_dir=base_dir, title=Path(out_dir).name)
    finally:
        for model in models.values():
            model.source.close()
    return Path(out_dir)
