"""The toy EvoVLM-JP pipeline end to end: a shortened main command on the shipped zoo.

`evomm evolve pipelines/toy_evovlm_jp.yml` with a tiny budget (PS, DFS, PS+DFS, then the
held-out report): results.json names every model of the paper's table, report.md is written,
and the evolved checkpoints load with `LlavaForConditionalGeneration.from_pretrained` and
answer a Japanese question in Japanese. Set EVOMM_TOY_ZOO to run it on another zoo folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import torch

from evomm.cli import main
from evomm.errors import ConfigError
from testkit.toy_run import short_toy_config

ROOT = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("EVOMM_TOY_ZOO", ROOT / "assets" / "zoo"))
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
NAMES = {"english_vlm", "japanese_lm", "uniform_50", "best_uniform", "ps", "dfs", "ps_dfs"}


def _short_config(tmp_path: Path) -> Path:
    return short_toy_config(tmp_path, ZOO)


def test_shortened_main_command_end_to_end(tmp_path, capsys):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from evomm.fitness.vqa_rouge_ja import PromptVLMGenerator, load_records

    run = tmp_path / "run"
    assert main(["evolve", str(_short_config(tmp_path)), "--out", str(run), "--no-progress"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert set(results["models"]) == NAMES
    for scores in results["models"].values():
        for key in ("rougeL", "rougeL_strict", "keyword_acc"):
            assert 0.0 <= scores[key] <= 100.0
        assert scores["rougeL_strict"] <= scores["rougeL"] + 1e-9
        assert scores["n"] == 10
    report = (run / "report.md").read_text()
    for name in NAMES:
        assert f"`{name}`" in report
    assert "![scores](report.png)" in report and (run / "report.png").is_file()
    assert "ps/fitness.png" in report
    printed = capsys.readouterr().out
    assert "| PS evolved | `ps` |" in printed  # the table is printed

    rows = load_records(ZOO / "data", "test", lang="ja")[:5]
    processor = AutoProcessor.from_pretrained(ZOO / "english_vlm")
    import evomm.models.dfs  # noqa: F401 - DFS configs load through transformers
    for stage in ("ps", "ps_dfs"):
        model = LlavaForConditionalGeneration.from_pretrained(run / stage / "model").eval()
        answers = PromptVLMGenerator(model, processor, generation={"max_new_tokens": 16}).generate(
            [r["question"] for r in rows], [r["pil"] for r in rows])
        assert sum(bool(JAPANESE.search(a)) for a in answers) >= 4, f"{stage} answered {answers!r}"
    assert isinstance(Image.open(run / "report.png"), Image.Image)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fitness_and_test_splits_share_no_images_or_questions():
    from evomm.fitness.vqa_rouge_ja import load_records

    fit = load_records(ZOO / "data", "fitness", lang=None, load_images=False)
    test = load_records(ZOO / "data", "test", lang=None, load_images=False)
    assert {r["image"] for r in fit}.isdisjoint({r["image"] for r in test})
    # not only other file names: no identical picture either
    assert {_digest(Path(r["image_path"])) for r in fit}.isdisjoint({_digest(Path(r["image_path"])) for r in test})
    assert {(r["image"], r["question"]) for r in fit}.isdisjoint({(r["image"], r["question"]) for r in test})
    assert {r["lang"] for r in test} == {"en", "ja"}


def test_report_refuses_overlapping_splits():
    from evomm.pipelines.toy_vlm_report import _check_disjoint

    with pytest.raises(ConfigError, match="share 1 images"):
        _check_disjoint([{"image": "a.png"}, {"image": "b.png"}], [{"image": "b.png"}])


def test_fitness_subset_is_seeded_and_spread_over_question_types():
    from evomm.fitness.vqa_rouge_ja import sample_records

    rows = [{"id": i, "type": t} for i in range(40) for t in ("colour", "shape")][:60]
    a, b = sample_records(rows, 10, seed=3), sample_records(rows, 10, seed=3)
    assert a == b and len(a) == 10
    assert sum(r["type"] == "colour" for r in a) == 5
    assert sample_records(rows, 10, seed=4) != a
    assert sample_records(rows, None, seed=0) == rows


def test_vqa_fitness_is_deterministic(tmp_path):
    """Same spec, same score (resume relies on it); a bad objective is a one-line error."""
    from evomm.pipelines.toy_vlm_report import uniform_recipe
    from evomm.fitness.registry import FitnessContext, build_evaluator

    src = {"base": str(ZOO / "base"), "vlm": str(ZOO / "english_vlm"), "ja": str(ZOO / "japanese_lm")}
    ctx = FitnessContext(metric="vqa_rouge_ja", sources=src, space={"models": [src["vlm"], src["ja"]]},
                         dataset=str(ZOO / "data"), split="fitness", n_samples=20,
                         generation={"max_new_tokens": 14}, options={"objective": "rougeL_strict", "processor": "vlm"})
    evaluator = build_evaluator(ctx)
    merged = uniform_recipe(src["base"], src["vlm"], src["ja"], 1.0, 1.0)
    first = evaluator.evaluate(merged)
    assert evaluator.evaluate(merged) == first
    assert len(evaluator.last_answers) == 20
    # the zoo's prompt layout survives swapping in a candidate model
    swapped = evaluator._generator.with_model(evaluator._candidate.model)
    assert swapped.build_prompt("q") == "USER: <image> q ASSISTANT:"
    with pytest.raises(ConfigError, match="objective"):
        from evomm.fitness.vqa_rouge_ja import VQARougeEvaluator

        VQARougeEvaluator([], None, objective="bleu")
    assert torch.get_num_threads() == 1


def test_seed_summary_reports_mean_and_spread(tmp_path):
    from evomm.pipelines.toy_results import main as summarise, summary_table

    runs = []
    for seed, acc in enumerate((40.0, 50.0, 60.0)):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        scores = {"rougeL": 10.0 * seed, "rougeL_strict": 5.0, "keyword_acc": acc, "by_type": {"colour": acc}}
        payload = {"seed": seed, "models": {"ps": scores, "english_vlm": scores}}
        (run / "results.json").write_text(json.dumps(payload))
        runs.append(payload)
    table = summary_table(runs)
    assert "| PS evolved (`ps`) | 10.0 ± 10.0 | 5.0 ± 0.0 | 50.0 ± 10.0 | 40.0-60.0 | 50.0 ± 10.0 |" in table
    assert table.index("english_vlm") < table.index("`ps`")  # the paper's row order
    assert summarise([str(tmp_path / "s0"), str(tmp_path / "missing")]) == 1
