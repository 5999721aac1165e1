"""The `lm_eval` fitness: lm-eval tasks on the in-memory candidate, the toy math zoo's local
tasks agreeing with evomm's own `math_accuracy_ja`, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from evomm.errors import ConfigError

pytest.importorskip("lm_eval")

ZOO = Path("assets/math_zoo").resolve()
TASKS = str(ZOO / "lm_eval")
TEMPLATE = "USER: {input} ASSISTANT:"


def _harness(tasks, **settings):
    from evomm.fitness.lm_eval_harness import LMEvalHarness, LMEvalSettings, load_tokenizer

    return LMEvalHarness(LMEvalSettings(tasks=tasks, include_path=[TASKS], include_defaults=False, **settings),
                         load_tokenizer(str(ZOO / "japanese_lm")))


def _math_scores(model, rows, batch_size):
    from transformers import AutoTokenizer

    from evomm.fitness.math_accuracy_ja import MathEvaluator
    from evomm.metrics.math import math_accuracy

    ev = MathEvaluator(rows, AutoTokenizer.from_pretrained(ZOO / "japanese_lm"), options={"template": TEMPLATE},
                       generation={"max_new_tokens": 64, "batch_size": batch_size})
    return math_accuracy([r["answer_number"] for r in rows], ev.answer(model))


@pytest.mark.parametrize("source", ["japanese_lm", "math_a"])
def test_the_local_tasks_give_math_accuracy_ja_numbers(source):
    from transformers import AutoModelForCausalLM

    from evomm.data.mgsm import load_mgsm
    from evomm.fitness.math_accuracy_ja import sample_problems

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(ZOO / source, dtype=torch.float32).eval()
    # the fitness task, seeded subsample (as a search draws it)
    harness = _harness([{"name": "toy_math_ja_fitness", "metric": "acc_ja,none"}], n_samples=30, sample_seed=3,
                       batch_size=30)
    got = harness.run(model)["toy_math_ja_fitness"]
    rows = sample_problems(load_mgsm(ZOO / "data" / "fitness.jsonl"), 30, 3)
    expected = _math_scores(model, rows, 30)
    assert got["acc,none"] == pytest.approx(expected["acc"])
    assert got["acc_ja,none"] == pytest.approx(expected["acc_ja"])
    # the held-out task, first documents
    held = _harness(["toy_math_ja"], limit=30, batch_size=30).run(model)["toy_math_ja"]
    test_rows = load_mgsm(ZOO / "data" / "test.jsonl")[:30]
    expected = _math_scores(model, test_rows, 30)
    assert (held["acc,none"], held["acc_ja,none"]) == pytest.approx((expected["acc"], expected["acc_ja"]))
    if source == "japanese_lm":
        assert expected["acc_ja"] > 0  # a number that could have disagreed
    else:
        assert expected["acc"] > expected["acc_ja"] or expected["acc"] == 0


def test_weighted_sum_and_clear_errors():
    from evomm.errors import MetricError
    from evomm.fitness.lm_eval_harness import LMEvalSettings

    harness = _harness([{"name": "toy_math_ja_fitness", "metric": "acc,none", "weight": 0.25},
                        {"name": "toy_math_ja_fitness", "metric": "acc_ja,none", "weight": 2.0}], limit=4)
    results = {"toy_math_ja_fitness": {"acc,none": 40.0, "acc_ja,none": 10.0}}
    assert harness.score(results) == pytest.approx(0.25 * 40 + 2 * 10)
    with pytest.raises(MetricError, match="reported no 'acc_ja,none'"):
        harness.score({"toy_math_ja_fitness": {"acc,none": 1.0}})
    with pytest.raises(ConfigError, match=r"unknown task\(s\) \['no_such_task'\]"):
        _harness(["no_such_task"])
    with pytest.raises(ConfigError, match="has no metric 'exact_match'"):
        _harness([{"name": "toy_math_ja", "metric": "exact_match,none"}])
    with pytest.raises(ValueError, match="not both"):
        LMEvalSettings(tasks=["toy_math_ja"], limit=3, n_samples=3)
    assert LMEvalSettings(tasks=["t"]).tasks[0].metric == "acc,none"  # mergekit-evolve's default


def test_a_ps_evolution_with_the_lm_eval_fitness_scores_as_math_accuracy_ja(tmp_path):
    """End to end: `evomm evolve` with `metric: lm_eval` on the local task; its best fitness
    equals `math_accuracy_ja` of the same genome on the same problems."""
    from evomm.cli import main
    from evomm.fitness.registry import FitnessContext, build_evaluator

    config = {
        "seed": 0, "num_threads": 1,
        "sources": {k: str(ZOO / v) for k, v in
                    {"base": "base", "ja": "japanese_lm", "math_a": "math_a"}.items()},
        "fitness": {"metric": "lm_eval", "n_samples": 16,
                    "tasks": [{"name": "toy_math_ja_fitness", "weight": 1.0, "metric": "acc_ja,none"}],
                    "options": {"include_path": TASKS, "include_defaults": False, "batch_size": 16, "tokenizer": "ja"}},
        "optimizer": {"name": "cmaes", "popsize": 3, "generations": 2, "sigma0": 0.3},
        "space": {"type": "ps", "method": "task_arithmetic", "base_model": "base", "models": ["ja", "math_a"],
                  "layers_per_group": 4, "weight_bounds": [0.0, 1.5], "initial_values": {"weight": 0.8}},
        "output": {"save_model": False, "plots": False},
    }
    path = tmp_path / "lm_eval_ps.yml"
    path.write_text(yaml.safe_dump(config))
    assert main(["evolve", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--no-fit-check"]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["evaluations"] == 6
    recipe = yaml.safe_load((tmp_path / "run" / "best_recipe.yml").read_text())
    ctx = FitnessContext(metric="math_accuracy_ja", sources=config["sources"], space={"models": [config["sources"]["ja"]]},
                         dataset=str(ZOO / "data"), split="fitness", n_samples=16,
                         generation={"max_new_tokens": 64, "batch_size": 16},
                         options={"objective": "acc_ja", "template": TEMPLATE, "tokenizer": "ja"}, seed=0)
    assert build_evaluator(ctx).evaluate(recipe) == pytest.approx(result["best_fitness"])
