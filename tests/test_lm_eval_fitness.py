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


def test_evomm_eval_runs_lm_eval_tasks_on_checkpoints_including_dfs(tmp_path, capsys):
    """`evomm eval --lm-eval` on a plain checkpoint and on a DFS checkpoint (scales != 1, so it
    only loads through evomm's registered class); the toy task agrees with math_accuracy_ja."""
    from transformers import AutoModelForCausalLM

    from evomm.cli import main
    from evomm.data.mgsm import load_mgsm
    from evomm.evaluation_llm import load_causal_lm
    from evomm.search.export import save_dfs_model

    ja, math_a = str(ZOO / "japanese_lm"), str(ZOO / "math_a")
    path = [[0, i] for i in range(8)] + [[1, 4], [1, 5]]
    dfs_dir = save_dfs_model({"type": "dfs", "sources": [ja, math_a], "path": path, "scales": [1.0] * 8 + [0.7, 0.9],
                              "embed_source": 0, "head_source": 0}, tmp_path / "dfs")
    out = tmp_path / "eval"
    rc = main(["eval", "--lm-eval", "toy_math_ja:acc_ja,toy_math_ja", "--include-path", TASKS,
               "--model", f"ja={ja}", "--model", f"dfs={dfs_dir}", "--limit", "20", "--batch-size", "20",
               "--out", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| model | toy_math_ja acc_ja | toy_math_ja | avg |" in table
    results = json.loads((out / "results.json").read_text())["models"]
    rows = load_mgsm(ZOO / "data" / "test.jsonl")[:20]
    for name, model in (("ja", AutoModelForCausalLM.from_pretrained(ja, dtype=torch.float32).eval()),
                        ("dfs", load_causal_lm(str(dfs_dir)))):
        expected = _math_scores(model, rows, 20)
        assert results[name]["toy_math_ja acc_ja"] == pytest.approx(expected["acc_ja"])
        assert results[name]["toy_math_ja"] == pytest.approx(expected["acc"])
    assert type(load_causal_lm(str(dfs_dir))).__name__ == "DFSForCausalLM"


def test_the_jp_lmeh_preset_names_real_lm_eval_tasks():
    from lm_eval.tasks import TaskManager

    from evomm.evaluation_llm import JP_LMEH, parse_tasks

    columns = parse_tasks("jp-lmeh")
    assert [c.label for c in columns] == [k for k, v in JP_LMEH.items() if v is not None]
    assert len(JP_LMEH) == 9 and JP_LMEH["JCoLA"] is None
    known = set(TaskManager().all_tasks)
    assert {c.task for c in columns} <= known
    with pytest.raises(ConfigError, match="named twice"):
        parse_tasks("a,a")


def test_the_shipped_lm_eval_pipeline_builds_its_fitness():
    from evomm.fitness.lm_eval_harness import LMEvalEvaluator
    from evomm.fitness.registry import build_evaluator
    from evomm.search.config import load_config
    from evomm.search.stages import fitness_context

    config = load_config("pipelines/toy_evollm_jp_lm_eval.yml")
    stage = config.stages[0]
    evaluator = build_evaluator(fitness_context(config, stage, dict(config.sources)))
    assert isinstance(evaluator, LMEvalEvaluator)
    assert evaluator.harness.samples is not None and len(evaluator.harness.samples["toy_math_ja_fitness"]) == 60
    assert [t.name for t in evaluator.harness.settings.tasks] == ["toy_math_ja_fitness"]


def test_evomm_eval_refuses_a_model_it_cannot_load(tmp_path, capsys):
    from evomm.cli import main

    rc = main(["eval", "--lm-eval", "toy_math_ja", "--include-path", TASKS, "--model", str(tmp_path / "missing"),
               "--limit", "2", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "cannot load a causal LM" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
