"""`evomm merge` equals mergekit 0.1.5 on the same YAML (tiny Mistral models sharing a base)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from evomm.merge.recipe import Recipe
from evomm.merge.resolve import evaluate_setting
from testkit.merge_examples import make_llm_family

mergekit = pytest.importorskip("mergekit")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    paths = make_llm_family(tmp_path_factory.mktemp("llm"), tokenizer=False)
    return {k: str(v) for k, v in paths.items()}


def _recipes(p):
    base, a, b = p["base"], p["ft1"], p["ft2"]
    return {
        "linear": {
            "merge_method": "linear", "dtype": "float32",
            "models": [{"model": a, "parameters": {"weight": [0.2, 0.5, 1.0]}},
                       {"model": b, "parameters": {"weight": [{"filter": "mlp", "value": 0.9}, {"value": 0.4}]}}],
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic", "base_model": base, "dtype": "float32",
            "parameters": {"lambda": 0.8, "weight": 0.3},
            "models": [{"model": a, "parameters": {"weight": [{"filter": "mlp", "value": [0.1, 0.9]}]}},
                       {"model": b}],
        },
        "ties": {
            "merge_method": "ties", "base_model": base, "dtype": "float32",
            "parameters": {"normalize": True, "int8_mask": True},
            "models": [{"model": a, "parameters": {"weight": [0.2, 1.0], "density": 0.5}},
                       {"model": b, "parameters": {"weight": [{"filter": "self_attn", "value": 0.3}, {"value": 0.7}],
                                                   "density": [0.3, 0.9]}}],
        },
        "ties_rescale": {
            "merge_method": "ties", "base_model": base, "dtype": "float32",
            "parameters": {"rescale": True, "lambda": 0.9},
            "models": [{"model": a, "parameters": {"weight": 0.6, "density": 0.3}},
                       {"model": b, "parameters": {"weight": [0.2, 0.9], "density": 0.6}}],
        },
        "slerp": {
            "merge_method": "slerp", "base_model": base, "dtype": "float32",
            "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}, {"value": 0.5}]},
            "models": [{"model": base}, {"model": a}],
        },
        # mergekit's best-known recipe shape: one slice over all layers
        "slerp_slices": {
            "slices": [{"sources": [{"model": base, "layer_range": [0, 4]}, {"model": b, "layer_range": [0, 4]}]}],
            "merge_method": "slerp", "base_model": base, "dtype": "float32",
            "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                 {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]},
        },
        # a frankenmerge (mergekit's orcamini-platy-44layer shape): two layer ranges stacked
        "stack_linear": {
            "slices": [{"sources": [{"model": a, "layer_range": [0, 3]}]},
                       {"sources": [{"model": b, "layer_range": [1, 4]}]}],
            "merge_method": "linear", "dtype": "float32", "parameters": {"weight": 1.0},
        },
        # the recipe a unit-scale DFS export writes beside the model (passthrough, one source a slice)
        "stack_passthrough": {
            "slices": [{"sources": [{"model": a, "layer_range": [0, 2]}]}, {"sources": [{"model": b, "layer_range": [1, 4]}]},
                       {"sources": [{"model": a, "layer_range": [2, 4]}]}],
            "merge_method": "passthrough", "dtype": "float32",
        },
        # per-slice merges: each slice its own sources, base, parameters and gradient
        "stack_slerp": {
            "slices": [{"sources": [{"model": base, "layer_range": [0, 2]}, {"model": a, "layer_range": [1, 3]}],
                        "base_model": base, "parameters": {"t": [0.1, 0.9]}},
                       {"sources": [{"model": a, "layer_range": [2, 4]}, {"model": b, "layer_range": [0, 2]}],
                        "base_model": a},
                       {"sources": [{"model": b, "layer_range": [3, 4]}, {"model": base, "layer_range": [3, 4]}],
                        "base_model": b, "parameters": {"t": [{"filter": "mlp", "value": 0.8}, {"value": 0.2}]}}],
            "merge_method": "slerp", "dtype": "float32", "parameters": {"t": 0.4},
        },
        "stack_ties": {
            "slices": [{"sources": [{"model": a, "layer_range": [0, 4], "parameters": {"weight": 0.7, "density": 0.5}},
                                    {"model": b, "layer_range": [0, 4], "parameters": {"weight": [0.2, 1.0]}},
                                    {"model": base, "layer_range": [0, 4]}]},
                       {"sources": [{"model": b, "layer_range": [2, 4], "parameters": {"weight": 0.5}},
                                    {"model": a, "layer_range": [2, 4], "parameters": {"weight": 0.5}},
                                    {"model": base, "layer_range": [2, 4]}], "parameters": {"density": 0.3}}],
            "merge_method": "ties", "base_model": base, "dtype": "float32", "parameters": {"density": 0.8},
        },
    }


def _mergekit(cfg: dict, out) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(cfg), str(out),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    return load_file(out / "model.safetensors")


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "ties_rescale", "slerp", "slerp_slices", "stack_linear",
                                    "stack_passthrough", "stack_slerp", "stack_ties"])
def test_matches_mergekit(family, tmp_path, method):
    from evomm.merge.execute import run_merge

    cfg = _recipes(family)[method]
    expected = _mergekit(cfg, tmp_path / "mergekit")
    run_merge(Recipe.from_dict(cfg), tmp_path / "evomm", progress=False)
    got = load_file(tmp_path / "evomm" / "model.safetensors")
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0, msg=name)
    if method.startswith("stack"):
        import json

        layers = sum(s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0] for s in cfg["slices"])
        assert json.loads((tmp_path / "evomm" / "config.json").read_text())["num_hidden_layers"] == layers
        assert json.loads((tmp_path / "mergekit" / "config.json").read_text())["num_hidden_layers"] == layers
        return
    # the recipe really varies across layers: layer 0 and the last layer differ in mixing
    base = load_file(f"{family['base']}/model.safetensors")
    assert not torch.equal(got["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def test_gradient_and_filter_resolution_match_mergekit():
    from mergekit.config import ConditionalParameter, evaluate_setting as mk_evaluate

    from evomm.merge.recipe import ConditionalValue

    cases = [
        (0.5, "model.layers.0.mlp.up_proj.weight"),
        ([0.0, 0.25, 1.0], "model.layers.2.self_attn.q_proj.weight"),
        ([1, 3], "x"),
        ([True, False, True], "x"),
        ([{"filter": "self_attn", "value": [0.1, 0.9]}, {"value": 0.4}], "model.layers.1.self_attn.k_proj.weight"),
        ([{"filter": "self_attn", "value": [0.1, 0.9]}, {"value": 0.4}], "model.layers.1.mlp.up_proj.weight"),
        ([{"filter": "mlp", "value": 0.2}], "model.norm.weight"),
    ]
    for setting, name in cases:
        for t in (0.0, 1 / 3, 0.5, 2 / 3, 1.0):
            mk_setting = ([ConditionalParameter(**c) for c in setting]
                          if isinstance(setting, list) and isinstance(setting[0], dict) else setting)
            ours = ([ConditionalValue(**c) for c in setting]
                    if isinstance(setting, list) and isinstance(setting[0], dict) else setting)
            expected = mk_evaluate(name, mk_setting, t, validate=lambda v: v)
            got = evaluate_setting(ours, name, t)
            assert got == pytest.approx(expected), (setting, name, t)


def test_bad_slices_are_clear_errors(family, tmp_path):
    from evomm.errors import ConfigError
    from evomm.merge.execute import run_merge

    cfg = _recipes(family)["stack_linear"]
    cfg["slices"][1]["sources"][0]["layer_range"] = [2, 6]
    with pytest.raises(ConfigError, match=r"slices\[1\]: layer_range \[2, 6\] of .* is beyond its 4 layers"):
        run_merge(Recipe.from_dict(cfg), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    cfg["slices"][1]["sources"].append({"model": family["base"], "layer_range": [0, 3]})
    with pytest.raises(ConfigError, match="same length"):
        Recipe.from_dict(cfg)
    cfg["slices"][1]["sources"] = [{"model": family["ft2"], "layer_range": [3, 3]}]
    with pytest.raises(ConfigError, match="empty"):
        Recipe.from_dict(cfg)


def test_ties_ties_at_the_threshold_are_decided_as_mergekit(family, tmp_path):
    # 16-bit checkpoints repeat magnitudes: quantised task vectors put many entries exactly at
    # the k-th magnitude. By default evomm keeps exactly mergekit's k (its argsort order);
    # `tie_break: keep_all` keeps all of them and so differs.
    from safetensors.torch import save_file

    from evomm.merge.execute import run_merge

    base = load_file(f"{family['base']}/model.safetensors")
    quantised = {}
    for ref in ("ft1", "ft2"):
        tuned = load_file(f"{family[ref]}/model.safetensors")
        out = tmp_path / f"q_{ref}"
        out.mkdir()
        save_file({k: base[k] + torch.round((v - base[k]) * 64) / 64 for k, v in tuned.items()},
                  str(out / "model.safetensors"))
        (out / "config.json").write_text(open(f"{family[ref]}/config.json").read())
        quantised[ref] = str(out)
    cfg = {"merge_method": "ties", "base_model": family["base"], "dtype": "float32",
           "models": [{"model": quantised["ft1"], "parameters": {"weight": 0.6, "density": 0.3}},
                      {"model": quantised["ft2"], "parameters": {"weight": 0.8, "density": 0.45}}]}
    expected = _mergekit(cfg, tmp_path / "mergekit")
    run_merge(Recipe.from_dict(cfg), tmp_path / "evomm", progress=False)
    got = load_file(tmp_path / "evomm" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0, msg=name)
    cfg["parameters"] = {"tie_break": "keep_all"}
    run_merge(Recipe.from_dict(cfg), tmp_path / "keep_all", progress=False)
    other = load_file(tmp_path / "keep_all" / "model.safetensors")
    assert max((other[n] - expected[n]).abs().max().item() for n in expected) > 1e-3


def _method_recipe(method: str, p: dict) -> dict:
    """A recipe of `method` over the family with per-layer gradients and filter entries."""
    from evomm.merge.methods import METHODS

    spec = METHODS[method]
    base, a, b = p["base"], p["ft1"], p["ft2"]
    grad = {
        "weight": ([{"filter": "self_attn", "value": [0.2, 0.8]}, {"value": [0.6, 0.3]}],
                   [{"filter": "mlp", "value": 0.9}, {"value": [0.4, 0.7]}]),
        "density": ([0.4, 0.9], [{"filter": "self_attn", "value": 0.5}, {"value": [0.8, 0.3]}]),
        "gamma": ([0.01, 0.05], 0.02),
        "epsilon": ([0.02, 0.08], 0.05),
        "scale": ([{"filter": "mlp", "value": [0.5, 1.5]}, {"value": 1.0}], None),
    }
    merged = [a] if spec.max_models == 1 else [a, b]
    models = []
    for i, ref in enumerate(merged):
        params = {k: grad[k][i] for k in spec.per_model_params if grad[k][i] is not None}
        models.append({"model": ref, "parameters": params} if params else {"model": ref})
    cfg = {"merge_method": method, "dtype": "float32", "models": models}
    if spec.needs_base:
        cfg["base_model"] = base
    if "t" in spec.global_params:
        cfg["parameters"] = {"t": [{"filter": "self_attn", "value": [0.001, 0.01]}, {"value": 0.005}]}
    return cfg


DETERMINISTIC = ["breadcrumbs", "breadcrumbs_ties", "sce", "ram", "ramplus_tl", "nuslerp", "multislerp", "karcher",
                 "model_stock", "nearswap", "arcee_fusion", "passthrough"]


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_every_deterministic_method_matches_mergekit_with_gradients_and_filters(family, tmp_path, method):
    from evomm.merge.execute import run_merge

    cfg = _method_recipe(method, family)
    expected = _mergekit(cfg, tmp_path / "mergekit")
    run_merge(Recipe.from_dict(cfg), tmp_path / "evomm", progress=False)
    got = load_file(tmp_path / "evomm" / "model.safetensors")
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("method", ["della", "della_linear", "dare_ties", "dare_linear"])
def test_randomised_methods_repeat_by_seed_and_move_as_far_as_mergekit(family, tmp_path, method):
    from evomm.merge.execute import run_merge

    cfg = _method_recipe(method, family)
    cfg["models"] = [{"model": m["model"], "parameters": {k: v for k, v in m["parameters"].items()
                                                          if k not in ("density",)} | {"density": 0.5}}
                     for m in cfg["models"]]
    expected = _mergekit(cfg, tmp_path / "mergekit")
    outs = []
    for run in ("one", "two"):
        run_merge(Recipe.from_dict(cfg), tmp_path / run, progress=False)
        outs.append(load_file(tmp_path / run / "model.safetensors"))
    base = load_file(f"{family['base']}/model.safetensors")
    for name in expected:
        assert torch.equal(outs[0][name], outs[1][name])  # same seed, same output
    layer = [n for n in expected if ".layers." in n and n.endswith("proj.weight")]
    ours = torch.stack([(outs[0][n] - base[n]).norm() for n in layer])
    theirs = torch.stack([(expected[n] - base[n]).norm() for n in layer])
    assert (ours / theirs - 1).abs().mean() < 0.05, (ours / theirs)
