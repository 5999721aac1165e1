"""mergekit-evolve configs in `evomm evolve`: the same genome means the same merge as in
mergekit 0.1.5, the toy math zoo's mergekit-evolve YAML runs unchanged, and what cannot be
mapped is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomm.errors import ConfigError
from evomm.search.config import parse_config
from evomm.search.mergekit_evolve import translate
from evomm.search.stages import build_space
from testkit.merge_examples import make_llm_family

mergekit = pytest.importorskip("mergekit")

ZOO = "assets/math_zoo"


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return {k: str(v) for k, v in make_llm_family(tmp_path_factory.mktemp("family"), n_finetunes=2).items()}


def _mergekit_genotype(space, genome_def, x: np.ndarray) -> torch.Tensor:
    """evomm's genome x in mergekit's layout (groups, models, filter sets, params)."""
    from mergekit.evo.genome import METHOD_PARAM_MAPS

    params = METHOD_PARAM_MAPS[genome_def["merge_method"]]
    filters = list(genome_def.get("filters") or [])
    n_groups = len(space.groups)
    out = torch.zeros(n_groups, len(genome_def["models"]), len(filters) + 1, len(params))
    for value, (param, model, flt, g) in zip(x, space._coords):
        s = filters.index(flt) if flt in filters else len(filters)
        out[g, genome_def["models"].index(model), s, params.index(param)] = float(value)
    return out


def _merge_both(tmp_path, genome_def: dict, seed: int):
    """(mergekit's tensors, evomm's tensors) for one random genome of `genome_def`."""
    from mergekit.evo.genome import ModelGenome, ModelGenomeDefinition
    from mergekit.merge import MergeOptions, run_merge as mk_run_merge

    from evomm.merge.execute import run_merge
    from evomm.merge.recipe import Recipe

    raw = translate({"genome": genome_def, "tasks": ["toy_math_ja_fitness"]}, tmp_path)
    config = parse_config(raw)
    space = build_space(config.stages[0].space, dict(config.sources), seed=0)
    rng = np.random.default_rng(seed)
    x = space.lower + rng.random(space.dim) * (space.upper - space.lower)

    genome = ModelGenome(ModelGenomeDefinition.model_validate(genome_def))
    mk_cfg = genome.genotype_merge_config(_mergekit_genotype(space, genome_def, x)).model_dump(exclude_none=True)
    mk_cfg["dtype"] = "float32"
    from mergekit.config import MergeConfiguration

    mk_run_merge(MergeConfiguration.model_validate(mk_cfg), str(tmp_path / "mergekit"),
                 MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    recipe = space.decode(x)
    recipe["dtype"] = "float32"
    run_merge(Recipe.from_dict(recipe), tmp_path / "evomm", progress=False)
    return load_file(tmp_path / "mergekit" / "model.safetensors"), load_file(tmp_path / "evomm" / "model.safetensors")


@pytest.mark.parametrize("case", [
    {"merge_method": "task_arithmetic", "layer_granularity": 2},
    {"merge_method": "ties", "layer_granularity": 1, "filters": ["self_attn", "mlp"]},
    {"merge_method": "linear", "layer_granularity": 0},
    {"merge_method": "task_arithmetic", "layer_granularity": 2, "smooth": True, "normalize": True},
    {"merge_method": "ties", "layer_granularity": 2, "allow_negative_weights": True, "normalize": False},
])
def test_a_genome_merges_as_mergekit_evolve_merges_it(family, tmp_path, case):
    genome_def = {"models": [family["ft1"], family["ft2"]], "base_model": family["base"], **case}
    if case["merge_method"] == "linear":
        genome_def = {"models": [family["ft1"], family["ft2"], family["base"]], **case}
    expected, got = _merge_both(tmp_path, genome_def, seed=len(str(case)))
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0, msg=name)
    base = load_file(f"{family['base']}/model.safetensors")
    assert not torch.equal(got["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def _toy_mergekit_yaml(tmp_path, **genome) -> str:
    from pathlib import Path

    zoo = Path(ZOO).resolve()
    doc = {
        "genome": {"models": [str(zoo / "japanese_lm"), str(zoo / "math_a"), str(zoo / "math_b")],
                   "merge_method": "dare_ties", "base_model": str(zoo / "base"), "layer_granularity": 4,
                   "normalize": False, "allow_negative_weights": False, "smooth": False,
                   "filters": ["self_attn", "mlp"], **genome},
        "tasks": [{"name": "toy_math_ja_fitness", "weight": 1.0, "metric": "acc_ja,none"}],
        "limit": 12,
        "apply_chat_template": False,
    }
    path = tmp_path / "toy_math_mergekit.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_the_toy_math_mergekit_evolve_yaml_runs_unchanged(tmp_path):
    """The shipped mergekit-evolve file, as mergekit-evolve users write it (paths from the repo root)."""
    pytest.importorskip("lm_eval")
    from evomm.cli import main

    config = "pipelines/mergekit_evolve/toy_math.yml"
    text_before = open(config).read()
    out = tmp_path / "run"
    rc = main(["evolve", config, "--out", str(out), "--max-fevals", "6", "--force-population-size", "3",
               "--task-search-path", f"{ZOO}/lm_eval", "--batch-size", "60", "--no-progress", "--no-fit-check",
               "--set", "fitness.options.limit=12"])
    assert rc == 0
    assert open(config).read() == text_before
    result = json.loads((out / "result.json").read_text())
    assert result["evaluations"] == 6
    assert 0.0 <= result["best_fitness"] <= 100.0
    as_run = yaml.safe_load((out / "evomm_config.yml").read_text())
    assert as_run["fitness"]["metric"] == "lm_eval"
    assert as_run["stages"][0]["space"]["method"] == "dare_ties"
    assert as_run["optimizer"]["sigma0"] == pytest.approx(1 / 6)
    recipe = yaml.safe_load((out / "best_recipe.yml").read_text())
    filters = [e.get("filter") for e in recipe["models"][0]["parameters"]["weight"]]
    assert filters[:2] == ["model.norm.", "lm_head."] and "self_attn" in filters and "mlp" in filters
    assert (out / "model" / "config.json").is_file()


@pytest.mark.parametrize("genome, message", [
    ({"merge_method": "slerp"}, "slerp"),
    ({"merge_method": "della"}, "mergekit-evolve knows"),
    ({"tokenizer_source": "union"}, "union"),
    ({"layer_granularity": 3}, "does not divide the 8 layers"),
    ({"sparsify": True}, "sparsify"),
])
def test_what_cannot_be_mapped_is_refused(tmp_path, genome, message):
    raw = yaml.safe_load(open(_toy_mergekit_yaml(tmp_path, **genome)).read())
    with pytest.raises(ConfigError, match=message):
        translate(raw, tmp_path)
    raw = yaml.safe_load(open(_toy_mergekit_yaml(tmp_path)).read())
    with pytest.raises(ConfigError, match="random_init"):
        translate({**raw, "random_init": True}, tmp_path)


def test_mergekit_flags_are_refused_for_evomm_configs(tmp_path, capsys):
    from evomm.cli import main

    rc = main(["evolve", "pipelines/toy_evollm_jp.yml", "--out", str(tmp_path / "x"), "--max-fevals", "5"])
    assert rc == 2
    assert "for mergekit-evolve configs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_shuffle_with_limit_becomes_a_seeded_subsample(tmp_path):
    raw = yaml.safe_load(open(_toy_mergekit_yaml(tmp_path)).read())
    plain = translate(raw, tmp_path)["fitness"]
    shuffled = translate({**raw, "shuffle": True}, tmp_path)["fitness"]
    assert plain["options"]["limit"] == 12 and "n_samples" not in plain
    assert shuffled["n_samples"] == 12 and "limit" not in shuffled["options"]
