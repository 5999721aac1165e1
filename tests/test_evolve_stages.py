"""Multi-stage evolve configs: PS, then DFS over the PS result and a source (PS+DFS)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from evomm.cli import main
from evomm.errors import ConfigError
from evomm.search.config import parse_config


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from testkit.tiny import save, tiny_mistral

    root = tmp_path_factory.mktemp("stages")
    return {
        "base": str(save(tiny_mistral(base_seed=0), root / "base")),
        "a": str(save(tiny_mistral(seed=1, scale=0.02), root / "a")),
        "b": str(save(tiny_mistral(seed=2, scale=0.02), root / "b")),
    }


def _config(zoo) -> dict:
    return {
        "seed": 0,
        "sources": zoo,
        "optimizer": {"name": "cmaes", "popsize": 4, "generations": 2},
        "stages": [
            {"name": "ps",
             "space": {"type": "ps", "method": "task_arithmetic", "base_model": "base", "models": ["a", "b"],
                       "layers_per_group": 2},
             "fitness": {"metric": "synthetic_logits", "options": {"target": "a"}}},
            {"name": "ps_dfs",
             "space": {"type": "dfs", "models": ["stage:ps", "a"], "repeats": 1, "max_length": 6},
             "fitness": {"metric": "synthetic_logits", "options": {"target": "a"}}},
        ],
    }


def test_ps_then_dfs_over_the_ps_result(zoo, tmp_path):
    from evomm.models.dfs import DFSForCausalLM
    from evomm.fitness.synthetic import SyntheticLogitsEvaluator

    config_path = tmp_path / "stages.yml"
    config_path.write_text(yaml.safe_dump(_config(zoo)))
    run_dir = tmp_path / "run"
    assert main(["evolve", str(config_path), "--out", str(run_dir), "--no-progress"]) == 0

    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary) == ["ps", "ps_dfs"]
    for stage in ("ps", "ps_dfs"):
        for name in ("evaluations.jsonl", "best_recipe.yml", "fitness.png", "genome.png", "result.json",
                     "model/config.json", "model/README.md"):
            assert (run_dir / stage / name).exists(), f"{stage}/{name}"
    dfs_spec = yaml.safe_load((run_dir / "ps_dfs" / "best_recipe.yml").read_text())
    assert dfs_spec["type"] == "dfs"
    assert dfs_spec["sources"] == [str(run_dir / "ps" / "model"), zoo["a"]]  # stage:ps resolved

    # the saved DFS model is the searched candidate: same fitness when loaded from disk
    saved = DFSForCausalLM.from_pretrained(run_dir / "ps_dfs" / "model").eval()
    assert saved.config.num_hidden_layers == len(dfs_spec["path"])
    evaluator = SyntheticLogitsEvaluator(zoo["a"])
    with torch.no_grad():
        logits = saved(input_ids=evaluator._ids).logits
    distance = float(torch.sqrt(torch.mean((logits - evaluator._want) ** 2)))
    assert -distance == pytest.approx(summary["ps_dfs"]["best_fitness"], abs=1e-5)

    # resuming a finished multi-stage run skips both stages and changes nothing
    before = (run_dir / "ps_dfs" / "evaluations.jsonl").read_text()
    assert main(["evolve", str(config_path), "--out", str(run_dir), "--no-progress", "--resume"]) == 0
    assert (run_dir / "ps_dfs" / "evaluations.jsonl").read_text() == before


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["stages"][1]["space"].update(models=["stage:nope", "a"]), "'stage:nope' names no earlier stage"),
    (lambda c: c["stages"][0]["space"].update(models=["a", "zzz"]), "model 'zzz' is not one of sources"),
    (lambda c: c["stages"][0]["space"].update(method="average"), "unknown merge method 'average'"),
    (lambda c: c["optimizer"].pop("generations"), "set generations or max_evaluations"),
    (lambda c: c["optimizer"].update(popsize=1), "popsize"),
    (lambda c: c.update(backend={"type": "spark"}), "backend.type"),
    (lambda c: c["stages"][0]["space"].pop("base_model"), "stages.0.space: method task_arithmetic needs a base_model"),
    (lambda c: c.update(space=c["stages"][0]["space"]), "not both"),
    (lambda c: c["stages"][0].update(fitnes={}), "stages.0.fitnes: Extra inputs are not permitted"),
])
def test_config_errors_are_one_clear_line(zoo, mutate, message):
    config = _config(zoo)
    mutate(config)
    with pytest.raises(ConfigError) as info:
        parse_config(config, where="evolve.yml")
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("evolve.yml: ")


def test_unknown_fitness_fails_before_the_run_starts(zoo, tmp_path, capsys):
    config = _config(zoo)
    config["stages"][0]["fitness"]["metric"] = "rouge_jp"
    config_path = tmp_path / "bad.yml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["evolve", str(config_path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "unknown fitness 'rouge_jp'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "ps" / "evaluations.jsonl").exists()
    # fixed, the same command starts the run in the same folder
    config["stages"][0]["fitness"]["metric"] = "synthetic_logits"
    config["stages"] = config["stages"][:1]
    config_path.write_text(yaml.safe_dump(config))
    assert main(["evolve", str(config_path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "synthetic_logits" in (tmp_path / "run" / "config.yml").read_text()


def test_llava_x_llm_ps_then_dfs_gives_a_loadable_vlm(zoo, tmp_path):
    """The EvoVLM-JP shape: PS over an English VLM and a Japanese LM, then DFS over the PS
    result and the LM; both results load as LLaVA models and generate."""
    from transformers import LlavaForConditionalGeneration

    import evomm.models.dfs  # noqa: F401 - registers the DFS config class with transformers
    from testkit.tiny import save, tiny_llava

    sources = {"base": zoo["base"], "ja": zoo["b"], "vlm": str(save(tiny_llava(seed=7, scale=0.02), tmp_path / "vlm"))}
    config = {
        "seed": 0, "sources": sources,
        "optimizer": {"name": "cmaes", "popsize": 2, "generations": 1},
        "fitness": {"metric": "synthetic_logits", "options": {"target": "ja"}},
        "output": {"plots": False},
        "stages": [
            {"name": "ps", "space": {"type": "ps", "method": "task_arithmetic", "base_model": "base",
                                     "models": ["vlm", "ja"], "evomm": {"keep_from": "vlm"}}},
            {"name": "ps_dfs", "space": {"type": "dfs", "models": ["stage:ps", "ja"], "repeats": 2, "max_length": 6}},
        ],
    }
    config_path = tmp_path / "vlm.yml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["evolve", str(config_path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    ids = torch.randint(3, 120, (1, 5), generator=torch.Generator().manual_seed(0))
    for stage in ("ps", "ps_dfs"):
        model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "run" / stage / "model").eval()
        out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
        assert out.shape == (1, 8)
    spec = yaml.safe_load((tmp_path / "run" / "ps_dfs" / "best_recipe.yml").read_text())
    assert model.config.text_config.num_hidden_layers == len(spec["path"])


def test_ps_evolution_with_della_on_the_toy_zoo(tmp_path):
    # mergekit's della, evolved per layer (weight, density and epsilon per model) on the toy
    # zoo's LLaVA x Japanese LM, with the VQA fitness: the evolve stage runs its candidates in
    # memory through della's own function, and the best recipe rebuilds with `evomm merge`
    from pathlib import Path

    from safetensors.torch import load_file

    from evomm.merge.execute import run_merge
    from evomm.merge.recipe import load_recipe

    root = Path(__file__).resolve().parents[1]
    overrides = ["stages=[{name: ps, space: {type: ps, method: della, base_model: base, models: [vlm, ja], "
                 "layers_per_group: 2, evomm: {keep_from: vlm}}}]", "fitness.n_samples=4",
                 "fitness.generation.batch_size=4", "fitness.generation.max_new_tokens=6",
                 "optimizer.popsize=3", "optimizer.generations=2", "after_run=[]"]
    out = tmp_path / "run"
    argv = ["evolve", str(root / "pipelines" / "toy_evovlm_jp.yml"), "--out", str(out), "--no-progress"]
    assert main(argv + [a for o in overrides for a in ("--set", o)]) == 0
    rows = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r.get("error") is None for r in rows)
    assert len({r["fitness"] for r in rows}) > 1  # the genome changes what the model answers
    recipe = load_recipe(out / "best_recipe.yml")
    assert recipe.merge_method == "della" and recipe.evomm.seed == 0
    params = recipe.models[0].parameters
    assert {"weight", "density", "epsilon"} <= set(params)
    run_merge(recipe, tmp_path / "again", progress=False)
    saved, again = load_file(out / "model" / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(saved[k], again[k]) for k in saved)
