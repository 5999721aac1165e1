"""The VLM pipeline configs validate, and the real-scale one builds its search spaces from
configs and safetensors headers alone (on miniatures of LLaVA-1.6-Mistral-7B and shisa-gamma-7b)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomm.errors import ConfigError
from evomm.search.config import STAGE_REF, load_config
from evomm.fitness.registry import get_fitness
from evomm.search.stages import build_space, fitness_context

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "pipelines" / "evovlm_jp.yml"
TOY = ROOT / "pipelines" / "toy_evovlm_jp.yml"


def _stand_ins(tmp_path: Path) -> dict[str, str]:
    """Miniatures of the real checkpoints (tests/miniatures.py): 32 layers each, llava-hf
    names, a LLaVA text_config without num_hidden_layers, vocab 32064 vs 32000."""
    from miniatures import evovlm_sources

    return {name: str(path) for name, path in evovlm_sources(tmp_path).items()}


def test_real_scale_config_validates_and_builds_its_spaces_without_weights(tmp_path):
    config = load_config(REAL)
    assert [s.name for s in config.stages] == ["ps", "dfs", "ps_dfs"]
    assert all(s.fitness.metric == "vqa_rouge_ja" for s in config.stages)
    get_fitness("vqa_rouge_ja")  # the registered name resolves (lazy provider)
    sources = _stand_ins(tmp_path)
    assert set(sources) == set(config.sources)
    spaces = {}
    for stage in config.stages:
        spaces[stage.name] = build_space(stage.space, sources, config.seed)
        ctx = fitness_context(config, stage, sources)
        assert ctx.options["objective"] == "rougeL" and ctx.options["template"] == "ja-vqa"
        sources[STAGE_REF + stage.name] = sources["llava"]  # the stage's model: a LLaVA like the parent
    ps = spaces["ps"]
    # DARE-TIES: a weight and a density per layer for each of the two parents
    assert ps.dim == 2 * 2 * 32
    recipe = ps.decode(ps.initial())
    assert recipe["merge_method"] == "dare_ties"
    assert recipe["evomm"]["keep_from"] == sources["llava"]
    assert [m["model"] for m in recipe["models"]] == [sources["llava"], sources["shisa"]]
    assert len(recipe["models"][0]["parameters"]["weight"]) == 32
    for name in ("dfs", "ps_dfs"):
        dfs = spaces[name]
        assert dfs.num_slots == (32 + 32) * 3  # M = 64 layers, r = 3
        spec = dfs.decode(dfs.initial())
        assert spec["type"] == "dfs" and len(spec["path"]) == 32  # starts as the LLaVA decoder
        assert spec["embed_source"] == 0


def test_real_scale_config_documents_where_its_weights_come_from():
    text = REAL.read_text()
    for hub_id in ("llava-v1.6-mistral-7b", "shisa-gamma-7b-v1", "Mistral-7B-v0.1", "JA-VG-VQA"):
        assert hub_id in text


def test_toy_config_runs_all_three_stages_and_the_report():
    config = load_config(TOY)
    assert [s.name for s in config.stages] == ["ps", "dfs", "ps_dfs"]
    assert config.stages[2].space.models[0] == "stage:ps"
    assert config.after_run == ["evomm.pipelines.toy_vlm_report:write_report"]
    assert {"base", "vlm", "ja"} == set(config.sources)
    assert Path(config.sources["vlm"]).parts[-3:] == ("assets", "zoo", "english_vlm")
    from evomm.pipelines.toy_vlm_report import report_options

    opts = report_options(config)
    assert opts.test_split == "test" and opts.fitness_split == "fitness"
    assert Path(opts.dataset).is_absolute()


def test_report_options_name_a_bad_key(tmp_path):
    from evomm.pipelines.toy_vlm_report import report_options

    config = load_config(TOY)
    config.extras = {"report": {"dataset": "x", "uniform_gird": []}}
    with pytest.raises(ConfigError, match="uniform_gird"):
        report_options(config)
    config.extras = {"report": {"dataset": "x", "vlm": "nope"}}
    with pytest.raises(ConfigError, match="extras.report.vlm"):
        report_options(config)


def test_files_named_in_pipeline_comments_exist():
    import re

    for config in sorted((ROOT / "pipelines").glob("*.yml")):
        for named in re.findall(r"\b((?:eval|pipelines|assets|docs)/[\w./-]+\.(?:ya?ml|md|py))", config.read_text()):
            assert (ROOT / named).is_file(), f"{config.name} names {named}, which does not exist"


def test_set_overrides_reach_the_config_and_refuse_bad_keys():
    config = load_config(REAL, ["sources.llava=/data/llava", "device=cpu", "optimizer.generations=2",
                                "stages.1.space.repeats=2", "fitness.generation.batch_size=4"])
    assert config.sources["llava"] == "/data/llava" and config.device == "cpu"
    assert config.stages[1].space.repeats == 2
    assert all(s.optimizer.generations == 2 for s in config.stages)
    assert all(s.fitness.generation["batch_size"] == 4 for s in config.stages)
    for bad, message in (("device", "KEY=VALUE"), ("stages.9.space.repeats=2", "not an index"),
                         ("seed.x=1", "is a value"), ("fitness.options=[", "not valid YAML")):
        with pytest.raises(ConfigError, match=message):
            load_config(REAL, [bad])
