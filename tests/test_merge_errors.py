"""Bad input: one clear line on stderr, exit code 2, and nothing left at OUT_DIR."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from evomm.cli import main
from evomm.errors import ConfigError
from evomm.merge.recipe import Recipe
from testkit.merge_examples import make_llm_family, write_tokenizer
from testkit.tiny import save, tiny_mistral, tiny_sdxl_unet


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    paths = make_llm_family(root)
    paths["unet"] = save(tiny_sdxl_unet(), root / "unet")
    paths["wide"] = save(tiny_mistral(hidden=48), root / "wide")
    paths["deep"] = save(tiny_mistral(num_layers=6), root / "deep")
    # a fine-tune with one tensor missing
    paths["holed"] = root / "holed"
    shutil.copytree(paths["ft2"], paths["holed"])
    state = load_file(paths["holed"] / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(paths["holed"] / "model.safetensors"), metadata={"format": "pt"})
    # same weights, a different tokenizer
    paths["othertok"] = root / "othertok"
    shutil.copytree(paths["ft2"], paths["othertok"])
    write_tokenizer(paths["othertok"], 128, prefix="word")
    # a download cut short
    paths["truncated"] = root / "truncated"
    shutil.copytree(paths["ft2"], paths["truncated"])
    data = (paths["truncated"] / "model.safetensors").read_bytes()
    (paths["truncated"] / "model.safetensors").write_bytes(data[: len(data) // 2])
    # a pickle checkpoint
    paths["pickle"] = root / "pickle"
    paths["pickle"].mkdir()
    shutil.copy(paths["ft2"] / "config.json", paths["pickle"] / "config.json")
    torch.save(load_file(paths["ft2"] / "model.safetensors"), paths["pickle"] / "pytorch_model.bin")
    return paths


def _ties(zoo, second="ft2", **extra):
    recipe = {"merge_method": "ties", "base_model": str(zoo["base"]),
              "models": [{"model": str(zoo["ft1"]), "parameters": {"weight": 0.5, "density": 0.5}},
                         {"model": str(zoo[second]), "parameters": {"weight": 0.5, "density": 0.5}}]}
    recipe.update(extra)
    return recipe


def _fails(tmp_path, capsys, recipe: dict, match: str) -> str:
    cfg = tmp_path / "recipe.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert main(["merge", str(cfg), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("evomm merge: error:") and match in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.yml"]  # no temp dir left behind either
    return err


def test_mismatched_architectures(zoo, tmp_path, capsys):
    err = _fails(tmp_path, capsys, _ties(zoo, "unet"), "mismatched architectures")
    assert "sdxl_unet" in err and "llm" in err


def test_mismatched_layer_counts(zoo, tmp_path, capsys):
    _fails(tmp_path, capsys, _ties(zoo, "deep"), "different numbers of layer groups")


def test_mismatched_shapes(zoo, tmp_path, capsys):
    err = _fails(tmp_path, capsys, _ties(zoo, "wide"), "mismatched shapes for ")
    assert "[128, 32]" in err and "[128, 48]" in err


def test_missing_tensor(zoo, tmp_path, capsys):
    _fails(tmp_path, capsys, _ties(zoo, "holed"), "missing tensor: ")


def test_differing_tokenizers(zoo, tmp_path, capsys):
    err = _fails(tmp_path, capsys, _ties(zoo, "othertok"), "differing tokenizers")
    assert "token id 3" in err


def test_truncated_safetensors(zoo, tmp_path, capsys):
    _fails(tmp_path, capsys, _ties(zoo, "truncated"), "truncated safetensors file")


def test_pickle_without_opt_in(zoo, tmp_path, capsys):
    _fails(tmp_path, capsys, _ties(zoo, "pickle"), "--allow-pickle")


def test_unknown_method(zoo, tmp_path, capsys):
    err = _fails(tmp_path, capsys, {**_ties(zoo), "merge_method": "tie"}, "merge_method: unknown merge method 'tie'")
    assert "ties" in err


def test_unknown_parameter(zoo, tmp_path, capsys):
    recipe = _ties(zoo)
    recipe["models"][1]["parameters"]["wieght"] = 0.3
    _fails(tmp_path, capsys, recipe, "models[1].parameters.wieght: unknown parameter for ties")


def test_failure_during_writing_leaves_nothing(zoo, tmp_path, capsys, monkeypatch):
    """An error after writing started (here: inside the arithmetic) still leaves no OUT_DIR."""
    import evomm.merge.execute as execute

    calls = {"n": 0}
    original = execute.merge_tensor

    def failing(plan, task, device="cpu"):
        calls["n"] += 1
        if calls["n"] == 5:
            raise ConfigError("boom after four tensors")
        return original(plan, task, device)

    monkeypatch.setattr(execute, "merge_tensor", failing)
    _fails(tmp_path, capsys, _ties(zoo), "boom after four tensors")


@pytest.mark.parametrize("patch, message", [
    ({"models": []}, "models: at least one model is required"),
    ({"dtype": "float8"}, "dtype: unknown dtype 'float8'"),
    ({"colour": 1}, "colour: unknown key"),
    ({"evomm": {"architecture": "gpt"}}, "evomm.architecture: Input should be"),
    ({"parameters": {"t": 0.5}}, "parameters.t: unknown parameter for ties"),
    ({"slices": [{"sources": []}]}, "slices: give either models: or slices:"),
    ({"base_model": None}, "base_model: required by merge_method ties"),
])
def test_validation_errors_name_the_key(zoo, patch, message):
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict({**_ties(zoo), **patch})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_required_and_scoped_parameters(zoo):
    recipe = _ties(zoo)
    del recipe["models"][0]["parameters"]["weight"]
    with pytest.raises(ConfigError, match=r"models\[0\].parameters.weight: required by ties"):
        Recipe.from_dict(recipe)
    recipe["parameters"] = {"weight": 0.3}  # a global fallback satisfies it, as in mergekit
    Recipe.from_dict(recipe)
    recipe["models"][0]["parameters"]["normalize"] = False
    with pytest.raises(ConfigError, match="applies to the whole merge"):
        Recipe.from_dict(recipe)
    slerp = {"merge_method": "slerp", "base_model": "a", "parameters": {"t": 0.5},
             "models": [{"model": "a"}, {"model": "b"}, {"model": "c"}]}
    with pytest.raises(ConfigError, match="slerp merges exactly 1 model"):
        Recipe.from_dict(slerp)


def test_stacking_slices_is_refused_for_sdxl_unets(tmp_path):
    from evomm.errors import ConfigError
    from evomm.merge.execute import run_merge
    from evomm.merge.recipe import Recipe
    from testkit.tiny import save, tiny_sdxl_unet

    a = save(tiny_sdxl_unet(seed=1, scale=0.01), tmp_path / "a" / "unet").parent
    b = save(tiny_sdxl_unet(seed=2, scale=0.01), tmp_path / "b" / "unet").parent
    recipe = Recipe.from_dict({"merge_method": "linear", "parameters": {"weight": 1.0},
                               "slices": [{"sources": [{"model": str(a), "layer_range": [0, 2]}]},
                                          {"sources": [{"model": str(b), "layer_range": [2, 4]}]}]})
    with pytest.raises(ConfigError, match="stacking layer ranges is for decoder models; this recipe is sdxl_unet"):
        run_merge(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
