"""The toy EvoLLM-JP pipeline end to end on the shipped math zoo, with a budget of seconds.

PS, DFS and PS+DFS, then the held-out report: results.json names every model of the paper's
table with acc and acc_ja, report.md shows example answers and the evolved layer path, and the
evolved checkpoints load with `from_pretrained` (the DFS ones once evomm is imported).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evomm.cli import main
from evomm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "assets" / "math_zoo"
NAMES = {"japanese_lm", "math_a", "math_b", "best_uniform", "ps", "dfs", "ps_dfs"}


def short_config(tmp_path: Path, n: int = 6) -> Path:
    config = yaml.safe_load((ROOT / "pipelines" / "toy_evollm_jp.yml").read_text(encoding="utf-8"))
    config["sources"] = {k: str(ZOO / Path(v).name) for k, v in config["sources"].items()}
    config["fitness"].update(dataset=str(ZOO / "data"), n_samples=n)
    config["optimizer"].update(popsize=2, generations=1)
    for stage in config["stages"]:
        stage.get("optimizer", {}).update(popsize=2, generations=1)
    config["extras"]["report"].update(dataset=str(ZOO / "data"), n_test=n, n_fitness=n, uniform_weights=[1.0],
                                      max_new_tokens=32)
    path = tmp_path / "toy_llm_short.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def test_shortened_toy_llm_run_end_to_end(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    import evomm.models.dfs  # noqa: F401 - DFS checkpoints load through transformers

    run = tmp_path / "run"
    assert main(["evolve", str(short_config(tmp_path)), "--out", str(run), "--no-progress"]) == 0
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert set(results["models"]) == NAMES
    for scores in results["models"].values():
        assert 0.0 <= scores["acc_ja"] <= scores["acc"] <= 100.0
        assert set(scores["by_kind"]) <= {"add", "sub", "mul", "multi"}
    assert results["test"]["n"] == 6 and results["uniform_grid"]["best"] == [1.0, 1.0, 1.0]
    report = (run / "report.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"`{name}`" in report
    assert "## Example answers" in report and "dfs/genome.png" in report and (run / "report.png").is_file()
    assert "| PS evolved | `ps` |" in capsys.readouterr().out
    for stage in ("ps", "dfs", "ps_dfs"):
        model = AutoModelForCausalLM.from_pretrained(run / stage / "model")
        assert model.get_output_embeddings() is not None


def test_report_options_are_checked(tmp_path):
    from evomm.pipelines.toy_llm_report import report_options
    from evomm.search.config import load_config

    config = load_config(short_config(tmp_path))
    config.extras["report"]["objective"] = "rouge"
    with pytest.raises(ConfigError, match="objective"):
        report_options(config)
    config.extras["report"].update(objective="acc", base="nope")
    with pytest.raises(ConfigError, match="'nope' is not one of sources"):
        report_options(config)


def test_fitness_and_test_splits_are_disjoint_and_cover_every_kind():
    from evomm.zoo_math.evaluate import read_split

    fit, test = read_split(ZOO / "data" / "fitness.jsonl"), read_split(ZOO / "data" / "test.jsonl")
    assert {r["question"] for r in fit}.isdisjoint({r["question"] for r in test})
    assert {r["kind"] for r in test} == {"add", "sub", "mul", "multi"} and {r["lang"] for r in test} == {"ja"}
