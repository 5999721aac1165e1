"""The PS genome: layout, bounds, and that decoded recipes mean what the genome says."""

from __future__ import annotations

import numpy as np
import pytest

from evomm.errors import ConfigError
from evomm.merge.recipe import Recipe
from evomm.merge.resolve import resolve_parameters
from evomm.search.ps_space import METHOD_PARAMETERS, PSSpace
from evomm.search.space import SearchSpace


EVOLVED = sorted(m for m, params in METHOD_PARAMETERS.items() if params)


@pytest.mark.parametrize("method", EVOLVED)
def test_every_method_decodes_to_a_valid_recipe(method):
    from evomm.merge.methods import EVOLVABLE, method_spec

    spec = method_spec(method)
    merged = ["b"] if spec.max_models == 1 else ["a", "b"]
    models = ["base", "b"] if method == "slerp" else merged
    base = "base" if spec.needs_base else None
    space = PSSpace(method, models, num_layers=6, base_model=base, layers_per_group=2, filters=["self_attn"])
    assert isinstance(space, SearchSpace)
    per_model = {p: (1 if p == "t" else len(merged)) for p in METHOD_PARAMETERS[method]}
    assert space.dim == sum(per_model.values()) * 2 * 3  # params x models x filters x groups
    for param, (lo, hi) in EVOLVABLE[method].items():  # the registry's valid range bounds the genome
        rows = [j for j, label in enumerate(space.labels()) if label.startswith(param)]
        assert all(space.lower[j] >= lo and space.upper[j] <= hi for j in rows if param != "weight")
    assert len(space.labels()) == space.dim
    rng = np.random.default_rng(0)
    recipe = Recipe.from_dict(space.decode(rng.uniform(space.lower, space.upper)))
    assert recipe.merge_method == method
    if method.startswith("dare"):
        assert recipe.evomm.seed == space.seed


@pytest.mark.parametrize("method", sorted(m for m, params in METHOD_PARAMETERS.items() if not params))
def test_methods_without_parameters_cannot_be_evolved(method):
    with pytest.raises(ConfigError, match="no per-model or per-layer parameter to evolve"):
        PSSpace(method, ["a", "b"], num_layers=4, base_model="base")


def test_group_values_reach_every_layer_of_their_group_exactly():
    space = PSSpace("ties", ["a", "b"], num_layers=6, base_model="base", layers_per_group=2,
                    filters=["self_attn"], extra_filters=["embed_tokens"])
    x = np.random.default_rng(1).uniform(space.lower, space.upper)
    recipe = Recipe.from_dict(space.decode(x))
    rows, table = space.layer_table(x)
    values = dict(zip(space.labels(), x))
    for layer in range(6):
        t = layer / 5
        attn = resolve_parameters(recipe, f"model.layers.{layer}.self_attn.q_proj.weight", t=t)
        mlp = resolve_parameters(recipe, f"model.layers.{layer}.mlp.up_proj.weight", t=t)
        group = f"L{2 * (layer // 2)}-{2 * (layer // 2) + 1}"
        assert attn.per_model["a"]["weight"] == pytest.approx(values[f"weight[a] self_attn:{group}"], abs=1e-12)
        assert mlp.per_model["b"]["density"] == pytest.approx(values[f"density[b] {group}"], abs=1e-12)
        assert table[rows.index("weight[a] self_attn"), layer] == values[f"weight[a] self_attn:{group}"]
    embed = resolve_parameters(recipe, "model.embed_tokens.weight", t=0.0)
    assert embed.per_model["b"]["weight"] == values["weight[b] embed_tokens"]


def test_bounds_and_clipping():
    space = PSSpace("dare_ties", ["a", "b"], num_layers=2, base_model="base", weight_bounds=(0.0, 2.0), density_min=0.1)
    labels = space.labels()
    for label, lo, hi in zip(labels, space.lower, space.upper):
        assert (lo, hi) == ((0.1, 1.0) if label.startswith("density") else (0.0, 2.0))
    recipe = space.decode(np.full(space.dim, 5.0))  # out of the box: clipped, never invalid
    weights = recipe["models"][0]["parameters"]["weight"]
    densities = recipe["models"][0]["parameters"]["density"]
    assert weights == [2.0, 2.0] and densities == [1.0, 1.0]
    assert space.decode(np.full(space.dim, -1.0))["models"][0]["parameters"]["density"] == [0.1, 0.1]


def test_initial_is_a_uniform_merge_and_encode_sets_parameters():
    space = PSSpace("linear", ["a", "b", "c"], num_layers=4)
    assert np.allclose(space.initial(), 1 / 3)
    ta = PSSpace("task_arithmetic", ["a", "b"], num_layers=4, base_model="base", initial_values={"weight": 0.8})
    assert np.allclose(ta.initial(), 0.8)
    assert np.allclose(ta.encode({"weight": 0.25}), 0.25)


def test_explicit_groups_for_blocks():
    space = PSSpace("slerp", ["base", "b"], num_layers=5, base_model="base", groups=[[0, 1], [2], [3, 4]])
    assert space.dim == 3
    assert space.decode(np.array([0.1, 0.2, 0.3]))["parameters"]["t"] == [0.1, 0.1, 0.2, 0.3, 0.3]
    with pytest.raises(ConfigError, match="space.groups"):
        PSSpace("slerp", ["base", "b"], num_layers=5, base_model="base", groups=[[0, 1], [3, 4]])


def test_bad_spaces_fail_with_a_clear_error():
    with pytest.raises(ConfigError, match="needs a base model"):
        PSSpace("ties", ["a", "b"], num_layers=4)
    with pytest.raises(ConfigError, match="unknown method 'average'"):
        PSSpace("average", ["a"], num_layers=4)
    with pytest.raises(ConfigError, match="slerp merges exactly one model"):
        PSSpace("slerp", ["a", "b"], num_layers=4, base_model="base")
