"""The real-scale recipes run unchanged on miniatures of their checkpoints (tests/miniatures.py).

Only paths, budgets and the device are overridden (`--set`), as a user with the weights would
point the recipe at their copies. Every stage must finish with no failed candidate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evomm.cli import main
from miniatures import SDXL_ZOO, evosdxl_sources, evovlm_sources, vqa_split

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ["optimizer.popsize=2", "optimizer.generations=1", "num_threads=1", "device=cpu"]


def _evaluations(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "evaluations.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_evovlm_jp_recipe_runs_every_stage_on_miniatures(tmp_path):
    from evomm.search.export import load_decoder_source

    sources = evovlm_sources(tmp_path / "weights")
    data = vqa_split(tmp_path / "data")
    overrides = [f"sources.{name}={path}" for name, path in sources.items()] + BUDGET + [
        f"fitness.dataset={data}", "fitness.n_samples=2", "fitness.generation.max_new_tokens=3",
        "fitness.generation.batch_size=2"]
    out = tmp_path / "run"
    argv = ["evolve", str(ROOT / "pipelines" / "evovlm_jp.yml"), "--out", str(out), "--no-progress"]
    assert main(argv + [arg for item in overrides for arg in ("--set", item)]) == 0
    for stage in ("ps", "dfs", "ps_dfs"):
        rows = _evaluations(out / stage)
        assert len(rows) == 2 and all(row.get("error") is None for row in rows), rows
        model = load_decoder_source(out / stage / "model", dtype="auto")
        assert type(model).__name__ == "LlavaNextForConditionalGeneration"
        assert str(model.dtype) == "torch.bfloat16"
    assert "--set sources.llava=" in (out / "config.yml").read_text()


@pytest.mark.slow
def test_evosdxl_jp_recipe_runs_on_miniatures_of_every_source_layout(tmp_path):
    # diffusers folder, fp16-variant folder (converted JSDXL), diffusers-named single UNet file,
    # LDM single-file checkpoint, bare unet/ folder; the toy zoo's scorer stands in for the
    # multilingual ViT-H (a path override); images at the toy VAE's size
    sources = evosdxl_sources(tmp_path / "weights")
    overrides = [f"sources.{name}={path}" for name, path in sources.items()] + BUDGET + [
        f"fitness.dataset={SDXL_ZOO / 'prompts.json'}", "fitness.n_samples=2", "fitness.generation.batch_size=2",
        "fitness.generation.height=64", "fitness.generation.width=64",
        "fitness.options.clip_model=local-dir:clip", "fitness.options.clip_pretrained=null"]
    out = tmp_path / "run"
    argv = ["evolve", str(ROOT / "pipelines" / "evosdxl_jp.yml"), "--out", str(out), "--no-progress"]
    assert main(argv + [arg for item in overrides for arg in ("--set", item)]) == 0
    rows = _evaluations(out)
    assert len(rows) == 2 and all(row.get("error") is None and row["fitness"] > 0 for row in rows), rows
    assert (out / "model" / "diffusion_pytorch_model.safetensors").is_file()
