"""The toy EvoLLM-JP zoo build: atomic, deterministic, and what the pipeline expects on disk."""

import json

import pytest

from evomm.cli import main
from evomm.zoo_math.build import SOURCES, MathZooConfig, base_corpus, build_math_zoo, expression, qa_corpus
from evomm.zoo_math.data import problems


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    return build_math_zoo(tmp_path_factory.mktemp("mz") / "zoo", MathZooConfig.small(), log=lambda *_: None)


def test_small_build_writes_every_source_and_the_held_out_splits(small_zoo):
    from transformers import AutoTokenizer, MistralForCausalLM

    for name in SOURCES:
        model = MistralForCausalLM.from_pretrained(small_zoo / name)
        assert model.config.num_hidden_layers == 4 and model.dtype.is_floating_point
        assert AutoTokenizer.from_pretrained(small_zoo / name).tokenize("12 + 9 = 21")[:3] == ["▁", "1", "2"]
    for split, n in (("fitness", 8), ("test", 8)):
        rows = [json.loads(line) for line in (small_zoo / "data" / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == n and {r["lang"] for r in rows} == {"ja"}
        assert all({"question", "answer", "answer_number", "kind"} <= set(r) for r in rows)
    info = json.loads((small_zoo / "build_info.json").read_text())
    assert set(info["final_losses"]) == set(SOURCES)
    assert not [p for p in small_zoo.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    assert main(["zoo", "check", "--zoo", str(small_zoo)]) == 0


def test_build_is_deterministic(small_zoo, tmp_path):
    again = build_math_zoo(tmp_path / "zoo", MathZooConfig.small(), log=lambda *_: None)
    first, second = (json.loads((z / "hashes.json").read_text()) for z in (small_zoo, again))
    first.pop("build_info.json"), second.pop("build_info.json")  # it records the stage timings
    assert first == second and any(name.endswith(".safetensors") for name in first)


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    import evomm.zoo_math.build as B

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(B.T, "train_decoder", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_math_zoo(tmp_path / "zoo", MathZooConfig.small(), log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_corpora_split_the_skills_between_the_sources():
    import random

    from evomm.zoo_math.build import expression_pairs, trainable_layers

    items = problems(0, 200)
    base = base_corpus(items, random.Random(0))
    # the base never sees a worded answer: translations and bare arithmetic facts only
    assert not [ex for ex in base if "answer" in ex.target or "答え" in ex.target]
    assert sum(ex.prompt == "" for ex in base) == 2 * len(items)
    pairs = expression_pairs(items)
    assert all(en.target == ja.target == expression(p) for (en, ja), p in zip(pairs, items))
    assert pairs[0][1].prompt.startswith("USER: ") and "ASSISTANT:" in pairs[0][1].prompt
    japanese = qa_corpus(items, "ja", ("add",))
    assert japanese and all("答えは" in ex.target and "+" in ex.target for ex in japanese)
    assert all("The answer is" in ex.target for ex in qa_corpus(items, "en", ("mul",)))
    assert expression(next(p for p in items if p.kind == "mul")).count("×") == 1
    # language at the ends (and the embeddings/head), computing in the middle
    assert trainable_layers("japanese_lm", 8) == ([0, 1, 6, 7], True)
    assert trainable_layers("math_a", 8) == ([2, 3, 4, 5], False) == trainable_layers("math_b", 8)


def test_specialists_change_only_their_layers(small_zoo):
    from safetensors.torch import load_file

    base = load_file(small_zoo / "base" / "model.safetensors")
    for name, moved in (("japanese_lm", {"layers.0.", "layers.3.", "embed", "model.norm", "lm_head"}),
                        ("math_a", {"layers.1.", "layers.2."})):
        tuned = load_file(small_zoo / name / "model.safetensors")
        changed = {k for k in base if not (tuned[k] == base[k]).all()}
        assert changed and all(any(m in k for m in moved) for k in changed), (name, sorted(changed)[:3])


def test_zoo_command_builds_the_math_world(tmp_path):
    assert main(["zoo", "build", "--world", "math", "--small", "--out", str(tmp_path / "z")]) == 0
    assert (tmp_path / "z" / "math_b" / "model.safetensors").is_file()
    assert main(["zoo", "build", "--world", "math", "--small"]) == 2  # never over the shipped zoo


# -- the shipped zoo (assets/math_zoo) -------------------------------------------------------


def test_shipped_math_zoo_matches_its_hashes_and_is_small():
    from evomm.commands.zoo import check_zoo
    from evomm.zoo_math import SHIPPED_MATH_ZOO

    assert check_zoo(SHIPPED_MATH_ZOO) == []
    assert sum(p.stat().st_size for p in SHIPPED_MATH_ZOO.rglob("*.safetensors")) <= 8 * 2**20


def test_shipped_sources_play_their_roles():
    """The Japanese LM answers Japanese questions in Japanese; math_b multiplies English problems
    right and answers them in English (its Japanese is the merge's job)."""
    import torch
    from transformers import AutoTokenizer, MistralForCausalLM

    from evomm.metrics.language import ScriptLanguageDetector
    from evomm.zoo_math import SHIPPED_MATH_ZOO as ZOO
    from evomm.zoo_math.data import split_problems
    from evomm.zoo_math.evaluate import evaluate_model, read_split

    tokenizer = AutoTokenizer.from_pretrained(ZOO / "base")
    detector = ScriptLanguageDetector()
    ja_rows = read_split(ZOO / "data" / "test.jsonl")[:16]
    japanese = MistralForCausalLM.from_pretrained(ZOO / "japanese_lm", dtype=torch.float32)
    _, answers = evaluate_model(japanese, tokenizer, ja_rows, max_new_tokens=40)
    assert sum(detector.is_japanese(a) for a in answers) >= 15
    test = split_problems(0, {"train": 6000, "fitness": 200, "test": 400})["test"]
    en_mul = [r for p in test if p.kind == "mul" for r in p.records() if r["lang"] == "en"][:16]
    math_b = MistralForCausalLM.from_pretrained(ZOO / "math_b", dtype=torch.float32)
    scores, answers = evaluate_model(math_b, tokenizer, en_mul, max_new_tokens=24)
    assert scores["acc"] >= 90.0 and not any(detector.is_japanese(a) for a in answers)
