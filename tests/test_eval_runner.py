"""The eval runner end to end: two tiny LLaVA models on the fixture benchmarks -> a table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evomm.cli import main as cli_main
from evomm.data import load_jsonl
from evomm.errors import ConfigError
from evomm.evaluation import (
    evaluate_generator,
    load_config,
    render_markdown,
    run_evaluation,
    score_answers,
)
from evomm.metrics import rouge_ja
from testkit.tiny import tiny_llava
from testkit.tiny_processor import save_tiny_vlm

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parents[1]


def write_config(tmp_path: Path, models: list[dict], **extra) -> Path:
    config = {
        "name": "tiny-run",
        "benchmarks": [
            {"kind": "ja-vg-vqa-500", "path": str(FIXTURES / "ja_vg_vqa_500")},
            {"kind": "ja-vlm-bench-in-the-wild", "path": str(FIXTURES / "ja_vlm_bench_in_the_wild")},
        ],
        "models": models,
        "generation": {"max_new_tokens": 4, "batch_size": 4},
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def test_two_tiny_llava_models_end_to_end(tmp_path, capsys):
    model_a = save_tiny_vlm(tiny_llava(seed=1, scale=0.05), tmp_path / "model-a")
    saved = save_tiny_vlm(tiny_llava(seed=7, scale=0.05), tmp_path / "model-b")
    config_path = write_config(tmp_path, [
        {"name": "tiny-a", "path": str(model_a)},
        {"name": "tiny-b", "path": str(saved), "template": "ja-vqa"},
    ])
    out = tmp_path / "out"
    assert cli_main(["eval", "--config", str(config_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (out / "rouge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["benchmarks"] == ["JA-VG-VQA-500", "JA-VLM-Bench-In-the-Wild"]
    assert set(results["metrics"]) == {"tiny-a", "tiny-b"}
    table = (out / "table.md").read_text(encoding="utf-8")
    assert table.strip() in printed
    assert "| Model | JA-VG-VQA-500 | JA-VLM-Bench-In-the-Wild |" in table
    assert "| Model | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-1 (ja) | ROUGE-2 (ja) | ROUGE-L (ja) |" in table

    predictions_by_model = {}
    for model in ("tiny-a", "tiny-b"):
        for bench, n in (("JA-VG-VQA-500", 6), ("JA-VLM-Bench-In-the-Wild", 4)):
            lines = (out / "predictions" / model / f"{bench}.jsonl").read_text(encoding="utf-8")
            records = [json.loads(line) for line in lines.splitlines()]
            assert len(records) == n
            predictions_by_model[model, bench] = [r["prediction"] for r in records]
            # the saved metrics are those of the saved predictions
            metrics = results["metrics"][model][bench]
            expected = rouge_ja([r["answer"] for r in records], [r["prediction"] for r in records])
            strict = rouge_ja([r["answer"] for r in records], [r["prediction"] for r in records],
                              strict_japanese=True)
            for key in ("rouge1", "rouge2", "rougeL"):
                assert metrics[key] == pytest.approx(expected[key])
                assert metrics[f"{key}_ja"] == pytest.approx(strict[key])
            # one row per model in the paper-layout table and in each detailed table
            assert table.count(f"| {model} |") == 3
        row = " | ".join(
            f"{results['metrics'][model][b]['rougeL']:.1f} ({results['metrics'][model][b]['rougeL_ja']:.1f})"
            for b in results["benchmarks"]
        )
        assert f"| {model} | {row} |" in table  # the paper-layout row
    # the two models really are different models
    assert predictions_by_model["tiny-a", "JA-VG-VQA-500"] != predictions_by_model["tiny-b", "JA-VG-VQA-500"]
    # first QA of each image was asked
    vg = [json.loads(line) for line in (out / "predictions" / "tiny-a" / "JA-VG-VQA-500.jsonl")
          .read_text(encoding="utf-8").splitlines()]
    assert {r["question"] for r in vg} == {"図形は何色ですか？"}


def test_rerun_replaces_output_atomically(tmp_path):
    model_a = save_tiny_vlm(tiny_llava(seed=1, scale=0.05), tmp_path / "model-a")
    config_path = write_config(tmp_path, [{"name": "tiny-a", "path": str(model_a)}])
    out = tmp_path / "out"
    (out / "stale").mkdir(parents=True)
    report = run_evaluation(load_config(config_path), out_dir=out, log=lambda _m: None)
    assert not (out / "stale").exists() and (out / "table.md").exists()
    assert render_markdown(report) == (out / "table.md").read_text(encoding="utf-8")
    # a failing run (bad benchmark path) leaves the previous output untouched
    bad = write_config(tmp_path, [{"name": "x", "path": str(model_a)}])
    data = yaml.safe_load(bad.read_text(encoding="utf-8"))
    data["benchmarks"][0]["path"] = str(tmp_path / "absent")
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert cli_main(["eval", "--config", str(bad), "--out", str(out)]) == 2
    assert (out / "table.md").read_text(encoding="utf-8") == render_markdown(report)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_oracle_and_english_generators_score_as_expected():
    dataset = load_jsonl(FIXTURES / "vqa_jsonl" / "data.jsonl")
    oracle = evaluate_generator(lambda qs, ims: list(dataset.answers), dataset)
    assert oracle.metrics["rougeL"] == 100.0 and oracle.metrics["rougeL_ja"] == 100.0
    english = evaluate_generator(lambda qs, ims: ["red 赤", "blue 青", "white 白"], dataset)
    assert english.metrics["rouge1"] > 0  # the kanji overlaps...
    assert english.metrics["rouge1_ja"] == 0.0  # ...but the answers are not Japanese


def test_vqa_fitness_scores_in_memory_candidates():
    from evomm.evaluation import VQAFitness
    from evomm.models.vlm import VLMGenerator
    from testkit.tiny_processor import tiny_processor

    dataset = load_jsonl(FIXTURES / "vqa_jsonl" / "data.jsonl")
    generator = VLMGenerator(tiny_llava(seed=1, scale=0.05), tiny_processor(),
                             generation={"max_new_tokens": 4})
    fitness = VQAFitness(dataset, generator, metric="rougeL")
    value = fitness(tiny_llava(seed=2, scale=0.05))
    assert value == fitness.last.metrics["rougeL"]
    predictions = [r["prediction"] for r in fitness.last.records]
    assert predictions == generator.with_model(tiny_llava(seed=2, scale=0.05)).generate(
        dataset.questions, dataset.images)
    assert value == pytest.approx(rouge_ja(dataset.answers, predictions)["rougeL"])
    with pytest.raises(ConfigError, match="fitness metric"):
        VQAFitness(dataset, generator, metric="bleu")


def test_score_answers_keys_and_bootstrap():
    metrics = score_answers(["白い犬", "赤"], ["白い猫", "赤"], bootstrap=50, seed=1)
    assert {"rouge1", "rougeL_ja", "rougeL_low", "rougeL_ja_high"} <= set(metrics)
    assert metrics["rougeL_low"] <= metrics["rougeL"] <= metrics["rougeL_high"]
    assert set(score_answers(["a"], ["a"], strict_japanese=False)) == {"rouge1", "rouge2", "rougeL"}


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"models\.0\.path: Field required"):
        load_config(write_config(tmp_path, [{"name": "x"}]))
    # models come from a path only: no test models built inside the package
    with pytest.raises(ConfigError, match=r"models\.0\.tiny_llava: Extra inputs are not permitted"):
        load_config(write_config(tmp_path, [{"name": "x", "path": "m", "tiny_llava": {}}]))
    with pytest.raises(ConfigError, match="models"):
        load_config(write_config(tmp_path, []))
    path = write_config(tmp_path, [{"name": "x", "path": "m"}], bogus=1)
    with pytest.raises(ConfigError, match="bogus"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")


def test_shipped_configs_validate():
    for path in sorted((REPO / "eval" / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.models and config.benchmarks, path
