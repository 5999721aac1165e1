"""CMA-ES on a fitness with a known optimum: recover hidden per-layer merge coefficients.

The target is a task-arithmetic merge of two tiny Mistral fine-tunes with hidden per-layer
weights, written by `evomm merge`'s executor; the fitness is minus the RMS distance of a
candidate's merged weights to it (`synthetic_target`). CMA-ES must land close to the hidden
weights and beat random search given the same number of evaluations.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from evomm.search.backends import InProcessBackend
from evomm.search.optimizer import CMAESOptimizer, RandomSearchOptimizer
from evomm.search.ps_space import PSSpace
from evomm.search.run import SearchRun
from evomm.fitness.synthetic import SyntheticTargetEvaluator

HIDDEN_A = [0.2, 0.8, 0.5, 0.1]
HIDDEN_B = [0.7, 0.3, 0.9, 0.4]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from evomm.merge.execute import run_merge
    from evomm.merge.recipe import Recipe
    from testkit.tiny import save, tiny_mistral

    root = tmp_path_factory.mktemp("synthetic")
    paths = {
        "base": save(tiny_mistral(base_seed=0), root / "base"),
        "a": save(tiny_mistral(seed=1, scale=0.02), root / "a"),
        "b": save(tiny_mistral(seed=2, scale=0.02), root / "b"),
    }
    hidden = {
        "merge_method": "task_arithmetic",
        "base_model": str(paths["base"]),
        "models": [
            {"model": str(paths["a"]), "parameters": {"weight": HIDDEN_A}},
            {"model": str(paths["b"]), "parameters": {"weight": HIDDEN_B}},
        ],
    }
    paths["target"] = run_merge(Recipe.from_dict(hidden), root / "target", progress=False)
    return {k: str(v) for k, v in paths.items()}


def _space(zoo) -> PSSpace:
    return PSSpace("task_arithmetic", [zoo["a"], zoo["b"]], num_layers=4, base_model=zoo["base"])


def _search(zoo, tmp_path, optimizer_cls, generations: int):
    space = _space(zoo)
    run = SearchRun(
        space,
        lambda: optimizer_cls(space.initial(), space.lower, space.upper, sigma0=0.25, popsize=8, seed=0),
        InProcessBackend(lambda: SyntheticTargetEvaluator(zoo["target"])),
        tmp_path / optimizer_cls.__name__,
        generations=generations,
        progress=False,
    )
    return run.run()


def test_cmaes_recovers_hidden_per_layer_weights_and_beats_random_search(zoo, tmp_path):
    hidden = np.array(HIDDEN_A + HIDDEN_B)
    cma_result = _search(zoo, tmp_path, CMAESOptimizer, generations=30)
    random_result = _search(zoo, tmp_path, RandomSearchOptimizer, generations=30)
    assert cma_result.evaluations == random_result.evaluations == 240

    cma_error = np.abs(cma_result.best_genome - hidden).max()
    random_error = np.abs(random_result.best_genome - hidden).max()
    print(f"cma-es: fitness {cma_result.best_fitness:.3g}, max |w - hidden| {cma_error:.4f}; "
          f"random: fitness {random_result.best_fitness:.3g}, max |w - hidden| {random_error:.4f}")
    assert cma_error < 0.05
    assert cma_result.best_fitness > random_result.best_fitness
    assert random_error > cma_error
    # the best genome decodes to a recipe naming the hidden weights per layer
    recipe = cma_result.best_spec
    assert np.allclose(recipe["models"][0]["parameters"]["weight"], HIDDEN_A, atol=0.05)
    # the history is monotone in best-so-far and improves on the start
    best_so_far = [h.best_so_far for h in cma_result.history]
    assert best_so_far == sorted(best_so_far)
    assert best_so_far[-1] > best_so_far[0]


def test_evolve_command_end_to_end_writes_a_rerunnable_recipe_and_model(zoo, tmp_path):
    import torch
    from safetensors.torch import load_file

    from evomm.cli import main

    config = {
        "seed": 0,
        "sources": {"base": zoo["base"], "a": zoo["a"], "b": zoo["b"]},
        "space": {"type": "ps", "method": "task_arithmetic", "base_model": "base", "models": ["a", "b"],
                  "layers_per_group": 2},
        "fitness": {"metric": "synthetic_target", "options": {"target": zoo["target"]}},
        "optimizer": {"name": "cmaes", "popsize": 6, "generations": 3},
    }
    config_path = tmp_path / "evolve.yml"
    config_path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    assert main(["evolve", str(config_path), "--out", str(run_dir), "--no-progress"]) == 0

    for name in ("evaluations.jsonl", "best_recipe.yml", "fitness.png", "genome.png", "result.json",
                 "model/config.json", "model/README.md"):
        assert (run_dir / name).exists(), name
    result = json.loads((run_dir / "result.json").read_text())
    assert len(result["history"]) == 3 and result["evaluations"] == 18
    assert len(result["best_genome"]) == 4  # 2 models x 2 layer groups
    assert "## Evolution" in (run_dir / "model/README.md").read_text()

    # best_recipe.yml is an ordinary recipe: `evomm merge` reproduces the saved model
    assert main(["merge", str(run_dir / "best_recipe.yml"), str(tmp_path / "remerged")]) == 0
    saved = load_file(run_dir / "model" / "model.safetensors")
    again = load_file(tmp_path / "remerged" / "model.safetensors")
    assert saved.keys() == again.keys()
    assert all(torch.equal(saved[k], again[k]) for k in saved)
    # and its fitness is the best fitness the search recorded
    evaluator = SyntheticTargetEvaluator(zoo["target"])
    assert evaluator.evaluate(yaml.safe_load((run_dir / "best_recipe.yml").read_text())) == result["best_fitness"]


def test_seed_flag_equals_the_seed_in_the_config(zoo, tmp_path):
    """`--seed N` runs exactly what `seed: N` in the config runs, and a different seed differs."""
    from evomm.cli import main

    def config(seed: int) -> dict:
        return {
            "seed": seed,
            "sources": {"base": zoo["base"], "a": zoo["a"], "b": zoo["b"]},
            "space": {"type": "ps", "method": "task_arithmetic", "base_model": "base", "models": ["a", "b"],
                      "layers_per_group": 4},
            "fitness": {"metric": "synthetic_target", "options": {"target": zoo["target"]}},
            "optimizer": {"name": "cmaes", "popsize": 3, "generations": 1},
        }

    def genomes(run_dir):
        return [json.loads(line)["genome"] for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]

    (tmp_path / "s0.yml").write_text(yaml.safe_dump(config(0)))
    (tmp_path / "s1.yml").write_text(yaml.safe_dump(config(1)))
    assert main(["evolve", str(tmp_path / "s0.yml"), "--out", str(tmp_path / "flag"), "--seed", "1", "--no-progress"]) == 0
    assert main(["evolve", str(tmp_path / "s1.yml"), "--out", str(tmp_path / "file"), "--no-progress"]) == 0
    assert main(["evolve", str(tmp_path / "s0.yml"), "--out", str(tmp_path / "zero"), "--no-progress"]) == 0
    assert genomes(tmp_path / "flag") == genomes(tmp_path / "file") != genomes(tmp_path / "zero")
    assert yaml.safe_load((tmp_path / "flag" / "config.yml").read_text())["seed"] == 1
    # resuming with the same flag is the same run
    assert main(["evolve", str(tmp_path / "s0.yml"), "--out", str(tmp_path / "flag"), "--seed", "1",
                 "--resume", "--no-progress"]) == 0
