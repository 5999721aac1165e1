"""Write a stage's best candidate as a loadable HF checkpoint with a model card.

PS: the best recipe is an ordinary merge recipe, so `evomm merge`'s executor writes it (the
same code path a user re-running best_recipe.yml takes); the card it writes gets an
"Evolution" section. DFS: the sources are loaded, the DFS model built over them and saved
(with a LLaVA source providing the embeddings, the DFS backbone goes back into that LLaVA, so
the result is still a VLM). Both are written into a temporary folder next to the target and
renamed into place, so an interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from evomm.errors import ConfigError


def save_ps_model(recipe: dict[str, Any], model_dir: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Merge `recipe` into `model_dir` with `evomm merge`'s executor; add the evolution card."""
    from evomm.io.outdir import atomic_output_dir
    from evomm.merge.execute import run_merge
    from evomm.merge.recipe import Recipe

    model_dir = Path(model_dir)
    with atomic_output_dir(model_dir, overwrite=True) as tmp:
        merged = tmp / _title(card, model_dir)  # run_merge titles the card after its folder
        run_merge(Recipe.from_dict(recipe, source="best recipe"), merged, progress=False)
        for item in merged.iterdir():
            item.rename(tmp / item.name)
        merged.rmdir()
        _append_card(tmp / "README.md", card)
    return model_dir


def save_dfs_model(spec: dict[str, Any], model_dir: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Build the DFS model of `spec` over its sources and save it (a LLaVA stays a LLaVA)."""
    import torch

    from evomm.io.outdir import atomic_output_dir, copy_aux_files
    from evomm.models.dfs import DFSForCausalLM, dfs_into_llava

    # in their storage dtype (bf16 for 7B checkpoints): float32 would double the host RAM
    sources = [load_decoder_source(path, dtype="auto") for path in spec["sources"]]
    dfs = DFSForCausalLM.from_sources(
        sources, spec["path"], spec.get("scales"),
        embed_source=int(spec.get("embed_source", 0)),
        head_source=spec.get("head_source"),
        source_names=[str(s) for s in spec["sources"]],
    )
    embed = sources[int(spec.get("embed_source", 0))]
    out_model = dfs_into_llava(embed, dfs) if _is_llava(embed) else dfs
    plain = plain_stack_config(spec, sources) if not _is_llava(embed) else None
    model_dir = Path(model_dir)
    with atomic_output_dir(model_dir, overwrite=True) as tmp:
        with torch.no_grad():
            out_model.save_pretrained(tmp, safe_serialization=True)
        if plain is not None:  # any runtime can serve it: a plain decoder with the path's layers
            (tmp / "config.json").write_text(json.dumps(plain, indent=2) + "\n")
            dtype = str(next(embed.parameters()).dtype).removeprefix("torch.")
            (tmp / "slices.yml").write_text(slices_recipe(spec, dtype))
        copy_aux_files(Path(spec["sources"][int(spec.get("embed_source", 0))]), tmp)
        (tmp / "dfs_spec.json").write_text(json.dumps(spec, indent=1))
        title = f"# {_title(card, model_dir)}\n\nA data-flow-space (DFS) merge made with evomm: a path of " \
                f"{len(spec['path'])} layers through {len(spec['sources'])} source models.\n"
        (tmp / "README.md").write_text(
            "---\nlibrary_name: transformers\ntags: [merge, evomm, dfs]\n---\n\n" + title)
        _append_card(tmp / "README.md", card)
    return model_dir


def plain_stack_config(spec: dict[str, Any], sources: list) -> dict[str, Any] | None:
    """The config of a plain decoder (e.g. `MistralForCausalLM`) whose layers are the DFS path,
    when the DFS model is one: every scale 1, and every source with the same layer settings
    (rotary embedding, attention window, norm epsilon), so one config describes every layer."""
    path, scales = spec["path"], spec.get("scales") or [1.0] * len(spec["path"])
    if any(float(x) != 1.0 for x in scales):
        return None
    configs = [m.config.get_text_config(decoder=True) for m in sources]
    keys = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "rope_parameters", "rope_theta", "sliding_window", "rms_norm_eps", "hidden_act")
    first = configs[0].to_dict()
    if any({k: c.to_dict().get(k) for k in keys} != {k: first.get(k) for k in keys} for c in configs[1:]):
        return None
    head = int(spec.get("head_source") if spec.get("head_source") is not None else spec.get("embed_source", 0))
    if head != int(spec.get("embed_source", 0)) or getattr(configs[0], "layer_types", None):
        return None
    plain = dict(configs[int(spec.get("embed_source", 0))].to_dict())
    plain.update(num_hidden_layers=len(path), architectures=[type(sources[head]).__name__])
    for key in ("_name_or_path", "transformers_version"):
        plain.pop(key, None)
    return plain


def slices_recipe(spec: dict[str, Any], dtype: str = "bfloat16") -> str:
    """mergekit's `slices:` + passthrough recipe that stacks the same layers (runs of consecutive
    layers of one source become one slice), as `evomm merge` and `mergekit-yaml` read it.
    It equals the DFS model when its embeddings and head come from the first and last slices'
    source; the header says so otherwise."""
    runs: list[list[int]] = []  # [source, first layer, end layer]
    for source, layer in spec["path"]:
        if runs and runs[-1][0] == source and runs[-1][2] == layer:
            runs[-1][2] += 1
        else:
            runs.append([source, layer, layer + 1])
    names = [str(s) for s in spec["sources"]]
    embed = int(spec.get("embed_source", 0))
    same = runs[0][0] == embed and runs[-1][0] == embed
    header = ("# The DFS path as a mergekit `slices:` recipe: `evomm merge slices.yml OUT` (or mergekit-yaml)\n"
              + ("# rebuilds this model.\n" if same else
                 "# NOTE: the embeddings and head come from the first and last slices' sources here, not from "
                 f"{names[embed]} as in the DFS model.\n"))
    recipe = {"merge_method": "passthrough", "dtype": dtype,
              "slices": [{"sources": [{"model": names[s], "layer_range": [a, b]}]} for s, a, b in runs]}
    return header + yaml.safe_dump(recipe, sort_keys=False)


def load_decoder_source(path: str | Path, dtype=None):
    """A source checkpoint as a transformers model (a LLaVA as LLaVA, else a causal LM).

    Weights load from safetensors only; `dtype` defaults to float32 ("auto": the checkpoint's)."""
    import torch
    from transformers import AutoModelForCausalLM

    config_file = Path(path) / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a transformers checkpoint folder ({exc})") from None
    kwargs = dict(use_safetensors=True, dtype=dtype or torch.float32)
    if model_type in ("llava", "llava_next"):
        from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

        cls = LlavaNextForConditionalGeneration if model_type == "llava_next" else LlavaForConditionalGeneration
        return cls.from_pretrained(path, **kwargs).eval()
    if model_type == "evomm_dfs":
        raise ConfigError(f"{path}: a saved DFS model cannot be a DFS source yet; use its PS sources")
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


def _title(card: dict[str, Any] | None, model_dir: Path) -> str:
    stage = (card or {}).get("stage")
    return f"evomm-{stage}" if stage else model_dir.name


def _is_llava(model) -> bool:
    inner = getattr(model, "model", None)
    return inner is not None and hasattr(inner, "language_model") and hasattr(inner, "vision_tower")


def _append_card(readme: Path, card: dict[str, Any] | None) -> None:
    if not card:
        return
    lines = [
        "", "## Evolution", "",
        f"Found by `evomm evolve` (stage `{card.get('stage')}`): best fitness "
        f"{card.get('best_fitness'):.6g} ({card.get('fitness_metric')}) after "
        f"{card.get('evaluations')} evaluations in {card.get('generations')} generations.", "",
    ]
    if card.get("recipe") is not None:
        lines += ["Best candidate:", "", "```yaml",
                  yaml.safe_dump(card["recipe"], sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    readme.write_text(text + "\n".join(lines), encoding="utf-8")
