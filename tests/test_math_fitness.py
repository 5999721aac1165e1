"""EvoLLM-JP's fitness: Sakana's MGSM-JA scoring, the MGSM loader, the prompt, and a search with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evomm.cli import main
from evomm.data.mgsm import load_mgsm
from evomm.errors import DatasetError
from evomm.metrics.math import extract_answer_number, math_accuracy
from evomm.models.textgen import JA_ALPACA_COT, TextGenerator, build_prompt, cut_at_stop

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("response, number", [
    ("りんごは8個です。答えは8です。", 8.0), ("3.5 km", 3.5), ("合計 .5", 0.5), ("答えなし", None),
    ("1,234円", 234.0),  # the published regex reads the digits after the comma, as here
    ("-5度", 5.0),        # and no minus sign
    ("12個と7個で19個", 19.0),
])
def test_the_last_number_is_the_answer_as_sakana_reads_it(response, number):
    assert extract_answer_number(response) == number


def test_accuracy_and_the_strict_japanese_accuracy():
    scores = math_accuracy([8, 3, 10, 4], ["全部で8個です。答えは8です。", "The answer is 3.", "答えは11です。", ""])
    assert scores == {"acc": 50.0, "acc_ja": 25.0}  # the English answer counts only for acc
    with pytest.raises(ValueError):
        math_accuracy([1], [])


def test_mgsm_loader_reads_the_datasets_layouts(tmp_path):
    (tmp_path / "mgsm").mkdir()
    (tmp_path / "mgsm" / "mgsm_ja.tsv").write_text("ジャネットのアヒルは…\t18\n問題2\t1,200\n", encoding="utf-8")
    rows = load_mgsm(tmp_path / "mgsm")
    assert rows == [{"question": "ジャネットのアヒルは…", "answer_number": 18.0},
                    {"question": "問題2", "answer_number": 1200.0}]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps({"question": "5+3は？", "answer_number": 8}, ensure_ascii=False) + "\n")
    assert load_mgsm(jsonl) == [{"question": "5+3は？", "answer_number": 8.0}]
    jsonl.write_text(json.dumps({"question": "x", "answer_number": "many"}) + "\n")
    with pytest.raises(DatasetError, match="not a number"):
        load_mgsm(jsonl)
    with pytest.raises(DatasetError, match="no MGSM file"):
        load_mgsm(tmp_path / "missing")


def test_prompt_and_stop_strings_are_sakanas():
    prompt = build_prompt("ja-alpaca-cot", "5+3は？")
    assert prompt.startswith("以下に、あるタスクを説明する指示があります。") and "一歩一歩考えましょう。" in prompt
    assert prompt.endswith("### 指示:\n5+3は？\n\n### 応答:") and prompt == JA_ALPACA_COT.replace("{input}", "5+3は？")
    assert cut_at_stop(" 8個です。答えは8です。\n### Instruction: 次", ("Instruction:", "Instruction")) == \
        "8個です。答えは8です。\n###"


def _toy_llms(root: Path) -> dict[str, str]:
    from testkit.tiny import save, tiny_mistral
    from testkit.tiny_processor import tiny_tokenizer

    out = {}
    for name, seed, scale in (("base", 0, 0.0), ("ja", 1, 0.05), ("math", 2, 0.05)):
        path = save(tiny_mistral(seed=seed, scale=scale, num_layers=4), root / name)
        tiny_tokenizer(128).save_pretrained(path)
        out[name] = str(path)
    return out


def test_text_generator_answers_every_question(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llms = _toy_llms(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(llms["ja"]).eval()
    generator = TextGenerator(model, AutoTokenizer.from_pretrained(llms["ja"]), max_new_tokens=5, batch_size=2)
    answers = generator.generate(["5たす3は？", "2かける4は？", "7ひく1は？"])
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


def test_ps_and_dfs_search_with_the_math_fitness(tmp_path):
    llms = _toy_llms(tmp_path / "llms")
    problems = tmp_path / "train.jsonl"
    problems.write_text("".join(json.dumps({"question": f"{a}たす{b}は？", "answer_number": a + b}, ensure_ascii=False)
                                + "\n" for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (6, 3)]), encoding="utf-8")
    config = {
        "name": "toy_math", "seed": 0, "num_threads": 1, "device": "cpu", "sources": llms,
        "fitness": {"metric": "math_accuracy_ja", "dataset": str(problems), "n_samples": 4,
                    "generation": {"max_new_tokens": 6, "batch_size": 4},
                    "options": {"objective": "acc", "tokenizer": "ja"}},
        "optimizer": {"name": "cmaes", "popsize": 2, "generations": 1},
        "stages": [
            {"name": "ps", "space": {"type": "ps", "method": "task_arithmetic", "base_model": "base",
                                     "models": ["ja", "math"], "evomm": {"keep_from": "ja"}}},
            {"name": "dfs", "space": {"type": "dfs", "models": ["ja", "math"], "repeats": 2, "max_length": 6,
                                      "scaling": "source_pair"}},
        ],
    }
    path = tmp_path / "toy_math.yml"
    path.write_text(json.dumps(config, ensure_ascii=False))
    assert main(["evolve", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    for stage in ("ps", "dfs"):
        rows = [json.loads(l) for l in (tmp_path / "run" / stage / "evaluations.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(r.get("error") is None and 0 <= r["fitness"] <= 100 for r in rows)


def test_the_real_recipe_validates_and_builds_its_spaces_on_miniatures(tmp_path):
    from miniatures import mistral_v01

    from evomm.search.config import load_config
    from evomm.search.stages import build_space, fitness_context

    sources = {"mistral_base": mistral_v01(tmp_path / "base"), "shisa": mistral_v01(tmp_path / "shisa", seed=2, drift=0.02),
               "wizardmath": mistral_v01(tmp_path / "wizardmath", seed=3, drift=0.02),
               "abel": mistral_v01(tmp_path / "abel", seed=4, drift=0.02)}
    config = load_config(ROOT / "pipelines" / "evollm_jp.yml", [f"sources.{k}={v}" for k, v in sources.items()])
    resolved = {k: str(v) for k, v in sources.items()}
    ps = build_space(config.stages[0].space, resolved, 0)
    assert ps.dim == 2 * 3 * 32  # a weight and a density per layer for each of the three models
    resolved["stage:ps"] = resolved["shisa"]
    for stage in config.stages[1:]:
        space = build_space(stage.space, resolved, 0)
        assert space.num_layers == [32, 32] and space.num_slots == 64 * 3
    ctx = fitness_context(config, config.stages[0], resolved)
    assert ctx.metric == "math_accuracy_ja" and ctx.options["objective"] == "acc_ja"
    assert ctx.options["template"] == "ja-alpaca-cot"
