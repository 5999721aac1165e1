"""evomm.merge.methods_sparse against mergekit 0.1.5's own implementations, plus properties.

Per-tensor parity calls mergekit's registered methods in-process; `evomm merge` is compared
with mergekit's `run_merge` (what `mergekit-yaml` runs) on tiny Mistral checkpoints. DELLA
draws random masks: per tensor, mergekit's `torch.bernoulli` is replaced by evomm's seeded
draw so the two can agree exactly, and mergekit's own RNG is compared in statistics.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomm.errors import ConfigError
from evomm.merge import methods as M
from evomm.merge import methods_sparse as S
from evomm.merge.recipe import Recipe

mk_registry = pytest.importorskip("mergekit.merge_methods.registry")
from mergekit.merge_methods.base import ParameterScope, TensorGroup  # noqa: E402

ATOL = 1e-5
SPARSE_METHODS = ("breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce", "ram", "ramplus_tl")


def _mergekit(name, base, models, **parameters):
    group = TensorGroup.from_tensors([base, *models], base_index=0)
    return mk_registry.get(name)([group], parameters=parameters)[0]


def _sources(seed=0, shape=(48, 40), n=3, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    return base, [base + scale * torch.randn(shape, generator=gen) for _ in range(n)]


def _sparse_sources(seed=0, shape=(40, 30), n=3, changed=(0.4, 0.3, 0.5), scale=0.05, noise=1e-6):
    """Models that each change a random share of entries, plus sub-epsilon noise elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    models = []
    for i in range(n):
        where = torch.rand(shape, generator=gen) < changed[i % len(changed)]
        delta = torch.where(where, scale * torch.randn(shape, generator=gen), noise * torch.randn(shape, generator=gen))
        models.append(base + delta)
    return base, models


def _close(ours, theirs):
    assert ours.dtype == torch.float32
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- breadcrumbs

BREADCRUMBS_CASES = [
    # weights, densities, gammas
    ([0.6, 0.4], [0.9, 0.5], [0.01, 0.1]),
    ([1.0, -0.5, 0.7], [0.3, 1.0, 0.8], [0.0, 0.2, 0.05]),
    ([0.5, 0.5], [1.0, 1.0], [0.3, 0.0]),  # density 1 keeps all, gamma notwithstanding
    ([0.8, 0.3], [0.7, 0.95], [0.5, 0.1]),  # density + gamma > 1: fewer outliers dropped
    ([0.4, 0.6, 0.2], [0.0, 0.0004, 0.5], [0.01, 0.01, 1.0]),  # keeps nothing; gamma 1
    ([1.0, 1.0], [0.6, 0.6], [0.0, 0.0]),  # gamma 0: TIES's magnitude trim
]


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("weights,densities,gammas", BREADCRUMBS_CASES)
@pytest.mark.parametrize("normalize,rescale,lambda_", [(False, False, 1.0), (True, True, 0.8), (True, False, 1.3),
                                                       (False, True, 1.0)])
@pytest.mark.parametrize("shape", [(48, 40), (300,)])
def test_breadcrumbs_match_mergekit(method, weights, densities, gammas, normalize, rescale, lambda_, shape):
    base, models = _sources(1, shape=shape, n=len(weights))
    ours = getattr(S, method)(base, models, weights, densities, gammas, normalize=normalize, rescale=rescale,
                              lambda_=lambda_)
    theirs = _mergekit(method, base, models, weight=weights, density=densities, gamma=gammas, normalize=normalize,
                       rescale=rescale, int8_mask=method.endswith("ties"), **{"lambda": lambda_})
    _close(ours, theirs)


def test_breadcrumbs_keeps_the_middle_of_the_magnitudes():
    delta = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    kept = S.breadcrumbs_trim(delta, 0.5, 0.1, rescale=False)
    ranks = delta.abs().argsort().argsort()  # 0 = smallest
    assert torch.equal(kept != 0, (ranks >= 400) & (ranks < 900))
    torch.testing.assert_close(kept[kept != 0], delta[kept != 0])
    rescaled = S.breadcrumbs_trim(delta, 0.5, 0.1, rescale=True)
    torch.testing.assert_close(rescaled.abs().sum(), delta.abs().sum())
    # gamma 0 keeps the same entries as TIES's trim
    assert torch.equal(S.breadcrumbs_trim(delta, 0.3, 0.0, False) != 0, M.trim_by_magnitude(delta, 0.3) != 0)
    # magnitude ties at a boundary are all kept (nothing in between is lost)
    tied = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0, 4.0])
    assert torch.equal(S.breadcrumbs_keep_mask(tied, 0.5, 0.0), torch.tensor([False, True, True, True, True, True]))


# ----------------------------------------------------------------------------- della


@pytest.fixture
def evomm_bernoulli(monkeypatch):
    """Make mergekit's DELLA draw its masks as evomm does (seed, model index)."""

    def install(seed, densities):
        drawing = iter([i for i, d in enumerate(densities) if 0 < d < 1])  # mergekit draws for these only

        def bernoulli(probabilities, *args, **kwargs):
            return S.sampled_keep_mask(probabilities, seed, next(drawing)).to(probabilities.dtype)

        monkeypatch.setattr(torch, "bernoulli", bernoulli)

    return install


DELLA_CASES = [
    # weights, densities, epsilons
    ([0.7, 0.5], [0.5, 0.3], [0.1, 0.05]),
    ([1.0, -0.6, 0.8], [0.7, 0.4, 1.0], [0.2, 0.0, 0.15]),
    ([0.5, 0.9], [1.0, 0.0], [0.15, 0.15]),  # deterministic: keep all / keep nothing
    ([0.3, 0.4, 0.5], [0.9, 0.1, 0.5], [0.09, 0.09, 0.49]),  # bounds of the valid range
]


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize("weights,densities,epsilons", DELLA_CASES)
@pytest.mark.parametrize("normalize,rescale,lambda_", [(True, True, 1.0), (False, True, 0.7), (True, False, 1.2),
                                                       (False, False, 1.0)])
@pytest.mark.parametrize("shape", [(48, 40), (300,), (6, 8, 3, 3)])
def test_della_matches_mergekit_with_the_same_masks(evomm_bernoulli, method, weights, densities, epsilons, normalize,
                                                    rescale, lambda_, shape):
    base, models = _sources(3, shape=shape, n=len(weights))
    seed = 1234
    ours = getattr(S, method)(base, models, weights, densities, epsilons, seed=seed, normalize=normalize,
                              rescale=rescale, lambda_=lambda_)
    evomm_bernoulli(seed, densities)
    theirs = _mergekit(method, base, models, weight=weights, density=densities, epsilon=epsilons,
                       normalize=normalize, rescale=rescale, int8_mask=False, **{"lambda": lambda_})
    _close(ours, theirs)


def test_della_keep_rates_match_mergekit_statistics():
    """With mergekit's own RNG: the same keep rate per magnitude-rank decile, within noise."""
    base, (model,) = _sources(4, shape=(200, 500), n=1)
    density, epsilon = 0.5, 0.3
    ranks = (model - base).abs().argsort(dim=1).argsort(dim=1)
    decile = ranks * 10 // 500
    torch.manual_seed(0)
    theirs = _mergekit("della_linear", base, [model], weight=[1.0], density=[density], epsilon=[epsilon],
                       rescale=False) != base
    ours = S.della_linear(base, [model], [1.0], [density], [epsilon], seed=0, rescale=False) != base
    for d in range(10):
        expected = density - epsilon + 2 * epsilon * (d + 0.5) / 10
        rate_ours, rate_theirs = (float(kept[decile == d].float().mean()) for kept in (ours, theirs))
        assert abs(rate_ours - expected) < 0.02 and abs(rate_theirs - expected) < 0.02
    assert abs(float(ours.float().mean()) - density) < 0.005


def test_della_probabilities_rank_within_rows():
    delta = torch.tensor([[0.1, -3.0, 0.5], [2.0, 0.0, -1.0]])
    probs = S.della_keep_probabilities(delta, 0.5, 0.2)
    torch.testing.assert_close(probs, torch.tensor([[0.3, 0.7, 0.5], [0.7, 0.3, 0.5]]))
    # a 1-D tensor is one row; a row of one entry gets the middle probability (mergekit fails there)
    torch.testing.assert_close(S.della_keep_probabilities(torch.tensor([3.0, -1.0]), 0.5, 0.2),
                               torch.tensor([0.7, 0.3]))
    torch.testing.assert_close(S.della_keep_probabilities(torch.ones(4, 1), 0.5, 0.2), torch.full((4, 1), 0.5))
    torch.testing.assert_close(S.della_keep_probabilities(torch.tensor(2.0), 0.4, 0.1), torch.tensor(0.4))


def test_della_is_seeded_and_epsilon_zero_is_dare():
    base, models = _sources(5, n=2)
    args = (base, models, [0.6, 0.4], [0.5, 0.3], [0.1, 0.2])
    for fn in (S.della, S.della_linear):
        same = fn(*args, seed=7)
        assert torch.equal(same, fn(*args, seed=7))
        assert not torch.equal(same, fn(*args, seed=8))
    delta = models[0] - base
    for density in (0.25, 0.5, 0.8):
        kept = S.della_drop(delta, density, 0.0, seed=7, model_index=1, rescale=False) != 0
        assert torch.equal(kept, M.dare_keep_mask(7, 1, delta.shape, density))
    rescaled = S.della_drop(delta, 0.5, 0.2, seed=7, model_index=0, rescale=True)
    torch.testing.assert_close(rescaled.abs().sum(), delta.abs().sum())


# ----------------------------------------------------------------------------- sce


@pytest.mark.parametrize("select_topk", [1.0, 0.7, 0.3, 0.05, 0.0])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("int8_mask", [False, True])
def test_sce_matches_mergekit(select_topk, n, int8_mask):
    base, models = _sources(6, n=n)
    # positions no model changes have zero variance: the selection counts nonzero ones only
    untouched = torch.rand(base.shape, generator=torch.Generator().manual_seed(6)) < 0.3
    models = [torch.where(untouched, base, m) for m in models]
    ours = S.sce(base, models, select_topk)
    theirs = _mergekit("sce", base, models, select_topk=select_topk, int8_mask=int8_mask)
    _close(ours, theirs)


def test_sce_weights_follow_mean_squares():
    base = torch.zeros(4)
    models = [torch.tensor([1.0, 1.0, -1.0, 1.0]), torch.tensor([2.0, -2.0, -2.0, 2.0])]
    # w = (1, 4) / 5; signs elected by the sum: (+, -, -, +)
    expected = torch.tensor([(0.2 * 1 + 0.8 * 2) / 1.0, -2.0, (0.2 * -1 + 0.8 * -2) / 1.0, (0.2 + 0.8 * 2)])
    torch.testing.assert_close(S.sce(base, models), expected)
    torch.testing.assert_close(S.sce(base, [base, base]), base)  # no change: uniform weights, nothing to add


# ----------------------------------------------------------------------------- ram


@pytest.mark.parametrize("epsilon", [1e-5, 0.0, 0.02])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_ram_matches_mergekit(epsilon, n):
    base, models = _sparse_sources(7, n=n)
    _close(S.ram(base, models, epsilon), _mergekit("ram", base, models, epsilon=epsilon))


@pytest.mark.parametrize("epsilon", [1e-5, 0.02])
@pytest.mark.parametrize("r,alpha", [(0.1, 0.2), (1.5, 0.05), (0.5, 0.0), (-0.3, 10.0)])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_ramplus_tl_matches_mergekit(epsilon, r, alpha, n):
    base, models = _sparse_sources(8, n=n, changed=(0.4, 0.1, 0.7))
    ours = S.ramplus_tl(base, models, r=r, alpha=alpha, epsilon=epsilon)
    _close(ours, _mergekit("ramplus_tl", base, models, r=r, alpha=alpha, epsilon=epsilon))


def test_ram_edge_cases():
    base, models = _sparse_sources(9, n=3)
    untouched = base.clone()
    # a model that changes nothing is left out of every mean, with or without RAM+
    with_idle = [models[0], untouched, models[1]]
    _close(S.ram(base, with_idle), _mergekit("ram", base, with_idle, epsilon=1e-5))
    _close(S.ramplus_tl(base, with_idle), _mergekit("ramplus_tl", base, with_idle, r=0.1, alpha=0.2, epsilon=1e-5))
    # ... where mergekit's RAM+ with epsilon 0 divides 0 by 0 and returns NaN, evomm does not
    ours = S.ramplus_tl(base, with_idle, epsilon=0.0)
    assert torch.isnan(_mergekit("ramplus_tl", base, with_idle, r=0.1, alpha=0.2, epsilon=0.0)).any()
    assert torch.isfinite(ours).all()
    # entries one model changes take that change whole; shared ones the mean
    b = torch.zeros(3)
    x, y = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 4.0, 0.0])
    torch.testing.assert_close(S.ram(b, [x, y]), torch.tensor([1.0, 3.0, 0.0]))
    # RAM+: x has 1 shared / 1 unique entry: rho 1 clipped to alpha 0.2, lambda 1 + 0.5 * 0.2
    torch.testing.assert_close(S.ramplus_tl(b, [x, y], r=0.5), torch.tensor([1.1, 3.0, 0.0]))


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", SPARSE_METHODS)
def test_parameter_names_scopes_and_defaults_match_mergekit(name):
    spec, theirs = M.METHODS[name], mk_registry.get(name).spec
    assert spec.needs_base
    per_model = {p.name: p.default for p in theirs.parameters if p.scope == ParameterScope.NON_BASE}
    shared = {p.name: p.default for p in theirs.parameters if p.scope == ParameterScope.SHARED}
    assert set(spec.per_model_params) == set(per_model)
    assert set(spec.global_params) | set(spec.compat_params) == set(shared)
    for p, default in {**per_model, **shared}.items():
        if p in spec.compat_params:
            continue
        if p in spec.required:
            assert p == "weight"
        else:
            assert spec.defaults[p] == default, p
    assert spec.uses_seed == name.startswith("della")


def test_bad_parameters_are_config_errors():
    base, models = _sources(10, n=2)
    della = M.METHODS["della"]
    # mergekit refuses density +- epsilon outside (0, 1) too (the default epsilon is 0.15)
    for density, epsilon in ((0.9, 0.15), (0.1, 0.1), (0.5, 0.5)):
        with pytest.raises(ConfigError, match=r"density \+- epsilon"):
            della(base, models, {"weight": [1, 1], "density": [0.5, density], "epsilon": [0.1, epsilon]}, {}, seed=0)
        with pytest.raises(ValueError, match="Epsilon"):
            _mergekit("della", base, models, weight=[1, 1], density=[0.5, density], epsilon=[0.1, epsilon])
    with pytest.raises(ConfigError, match=r"density \+- epsilon"):
        della(base, models, {"weight": [1, 1], "density": [0.9, 0.9]}, {}, seed=0)
    with pytest.raises(ConfigError, match="epsilon must be >= 0"):
        S.della_linear(base, models, [1, 1], [0.5, 0.5], [0.1, -0.1], seed=0)
    # density 1 or 0 needs no epsilon range, as in mergekit
    della(base, models, {"weight": [1, 1], "density": [1.0, 0.0], "epsilon": [0.5, 0.9]}, {}, seed=0)
    with pytest.raises(ConfigError, match="needs a seed"):
        della(base, models, {"weight": [1, 1]}, {})
    for gamma in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="gamma must be in"):
            M.METHODS["breadcrumbs"](base, models, {"weight": [1, 1], "density": [0.5, 0.5], "gamma": [0.1, gamma]})
    with pytest.raises(ConfigError, match="epsilon must be >= 0"):
        M.METHODS["ram"](base, models, {}, {"epsilon": -1e-3})
    with pytest.raises(ConfigError, match="alpha must be >= 0"):
        M.METHODS["ramplus_tl"](base, models, {}, {"alpha": -0.1})
    with pytest.raises(ConfigError, match="unknown per-model parameter 'weight'"):
        M.METHODS["sce"](base, models, {"weight": [1, 1]}, {})
    with pytest.raises(ConfigError, match="unknown per-model parameter 'epsilon'"):
        M.METHODS["breadcrumbs"](base, models, {"weight": [1, 1], "epsilon": [0.1, 0.1]})
    with pytest.raises(ConfigError, match="unknown parameter 'lambda'"):
        M.METHODS["ram"](base, models, {}, {"lambda": 0.5})
    with pytest.raises(ConfigError, match="'weight' is required"):
        M.METHODS["breadcrumbs_ties"](base, models, {"density": [0.5, 0.5]})
    with pytest.raises(ConfigError, match="expected 2 values"):
        M.METHODS["della_linear"](base, models, {"weight": [1, 1], "epsilon": [0.1]}, {}, seed=0)
    with pytest.raises(ConfigError, match="needs a base model"):
        M.METHODS["sce"](None, models, {}, {})


def test_registry_binds_recipe_names():
    base, models = _sources(11, n=2)
    per_model = {"weight": [0.4, 0.6], "density": [0.8, 0.6], "gamma": [0.02, 0.0]}
    out = M.METHODS["breadcrumbs_ties"](base, models, per_model,
                                        {"normalize": True, "rescale": True, "lambda": 0.9, "int8_mask": True})
    _close(out, S.breadcrumbs_ties(base, models, [0.4, 0.6], [0.8, 0.6], [0.02, 0.0], normalize=True, rescale=True,
                                   lambda_=0.9))
    out = M.METHODS["della"](base, models, {"weight": [0.4, 0.6], "density": [0.5, 0.6]}, {}, seed=3)
    _close(out, S.della(base, models, [0.4, 0.6], [0.5, 0.6], [0.15, 0.15], seed=3))
    _close(M.METHODS["sce"](base, models, {}, {"select_topk": 0.5, "int8_mask": True}), S.sce(base, models, 0.5))
    _close(M.METHODS["ramplus_tl"](base, models, {}, {"r": 0.3}), S.ramplus_tl(base, models, r=0.3))


@pytest.mark.parametrize("name", SPARSE_METHODS)
def test_evolvable_bounds_keep_every_method_valid(name):
    bounds = S.EVOLVABLE[name]
    spec = M.METHODS[name]
    assert set(bounds) == set(spec.per_model_params)
    base, models = _sources(12, n=2)
    corners = [{p: [lo_hi[k], lo_hi[1 - k]] for p, lo_hi in bounds.items()} for k in (0, 1)]
    corners += [{p: [lo_hi[0]] * 2 for p, lo_hi in bounds.items()}, {p: [lo_hi[1]] * 2 for p, lo_hi in bounds.items()}]
    for per_model in corners:
        # every combination of the per-model corner values, e.g. della's (0.1, 0.09) and (0.9, 0.09)
        out = spec(base, models, per_model, {}, seed=0)
        assert torch.isfinite(out).all()
    if name.startswith("della"):
        (d_lo, d_hi), (e_lo, e_hi) = bounds["density"], bounds["epsilon"]
        assert 0 < d_lo - e_hi and d_hi + e_hi < 1 and e_lo >= 0


# ----------------------------------------------------------------------------- recipes and `evomm merge`


def _recipe(name, base, a, b):
    head = {"merge_method": name, "base_model": base, "dtype": "float32"}
    return {
        "breadcrumbs": {**head, "parameters": {"gamma": 0.02, "lambda": 0.9},
                        "models": [{"model": a, "parameters": {"weight": [0.3, 0.9], "density": 0.8}},
                                   {"model": b, "parameters": {"weight": 0.5, "density": [0.5, 0.9],
                                                               "gamma": [{"filter": "mlp", "value": 0.1},
                                                                         {"value": 0.0}]}}]},
        "breadcrumbs_ties": {**head, "parameters": {"normalize": True, "rescale": True, "int8_mask": True},
                             "models": [{"model": a, "parameters": {"weight": 0.6, "density": [0.4, 0.9],
                                                                    "gamma": 0.05}},
                                        {"model": b, "parameters": {"weight": [0.2, 0.8], "density": 0.7}}]},
        # randomised methods end to end at deterministic densities (1: keep all, 0: keep nothing)
        "della": {**head, "parameters": {"epsilon": 0.05, "lambda": 1.1},
                  "models": [{"model": a, "parameters": {"weight": [0.5, 1.0], "density": 1.0}},
                             {"model": b, "parameters": {"weight": 0.7, "epsilon": 0.3,
                                                         "density": [{"filter": "mlp", "value": 0.0},
                                                                     {"value": 1.0}]}}]},
        "della_linear": {**head, "parameters": {"normalize": True, "rescale": False},
                         "models": [{"model": a, "parameters": {"weight": 0.4, "density": 1.0}},
                                    {"model": b, "parameters": {"weight": [0.1, 0.9], "density": 1.0}}]},
        "sce": {**head, "parameters": {"select_topk": [0.2, 1.0], "int8_mask": True},
                "models": [{"model": a}, {"model": b}]},
        "ram": {**head, "parameters": {"epsilon": [{"filter": "self_attn", "value": 0.01}, {"value": 0.02}]},
                "models": [{"model": a}, {"model": b}]},
        "ramplus_tl": {**head, "parameters": {"epsilon": 0.015, "r": [0.2, 1.0], "alpha": 0.5},
                       "models": [{"model": a}, {"model": b}]},
    }[name]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    from testkit.merge_examples import make_llm_family

    paths = make_llm_family(tmp_path_factory.mktemp("llm"), tokenizer=False)
    return {k: str(v) for k, v in paths.items()}


@pytest.mark.parametrize("name", SPARSE_METHODS)
def test_recipes_validate(name):
    recipe = Recipe.from_dict(_recipe(name, "base", "a", "b"))
    assert recipe.method.name == name and recipe.method.needs_base
    bad = _recipe(name, "base", "a", "b")
    bad["parameters"]["no_such_parameter"] = 1
    with pytest.raises(ConfigError, match="unknown parameter"):
        Recipe.from_dict(bad)


def test_recipe_errors_name_the_key():
    # a method-wide parameter under a model, a per-model one the method lacks, a missing weight
    bad = _recipe("ram", "base", "a", "b")
    bad["models"][0]["parameters"] = {"epsilon": 0.1}
    with pytest.raises(ConfigError, match="applies to the whole merge"):
        Recipe.from_dict(bad)
    bad = _recipe("sce", "base", "a", "b")
    bad["models"][0]["parameters"] = {"weight": 0.5}
    with pytest.raises(ConfigError, match=r"models\[0\].parameters.weight: unknown parameter"):
        Recipe.from_dict(bad)
    bad = _recipe("della", "base", "a", "b")
    del bad["models"][1]["parameters"]["weight"]
    with pytest.raises(ConfigError, match="weight: required"):
        Recipe.from_dict(bad)
    no_base = _recipe("breadcrumbs", "base", "a", "b")
    del no_base["base_model"]
    with pytest.raises(ConfigError, match="base_model: required"):
        Recipe.from_dict(no_base)


@pytest.mark.parametrize("name", SPARSE_METHODS)
def test_evomm_merge_matches_mergekit(family, tmp_path, name):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    from evomm.cli import main

    cfg = _recipe(name, family["base"], family["ft1"], family["ft2"])
    run_merge(MergeConfiguration.model_validate(cfg), str(tmp_path / "mergekit"),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    expected = load_file(tmp_path / "mergekit" / "model.safetensors")
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "recipe.yml"), str(tmp_path / "evomm"), "--no-progress"]) == 0
    got = load_file(tmp_path / "evomm" / "model.safetensors")
    assert set(got) == set(expected)
    for tensor in expected:
        assert got[tensor].dtype == torch.float32
        torch.testing.assert_close(got[tensor], expected[tensor], atol=ATOL, rtol=0, msg=tensor)
    base = load_file(f"{family['base']}/model.safetensors")
    changed = [t for t in expected if not torch.equal(got[t], base[t])]
    assert len(changed) > len(expected) // 2, "the merge should move most tensors away from the base"


def test_della_merge_is_reproducible_from_the_recipe_seed(family, tmp_path):
    from evomm.cli import main

    cfg = _recipe("della", family["base"], family["ft1"], family["ft2"])
    cfg["models"][0]["parameters"]["density"] = 0.5
    cfg["evomm"] = {"seed": 5}
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(cfg))
    for out in ("one", "two"):
        assert main(["merge", str(tmp_path / "recipe.yml"), str(tmp_path / out), "--no-progress"]) == 0
    one, two = (load_file(tmp_path / out / "model.safetensors") for out in ("one", "two"))
    assert all(torch.equal(one[k], two[k]) for k in one)
    cfg["evomm"] = {"seed": 6}
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "recipe.yml"), str(tmp_path / "three"), "--no-progress"]) == 0
    three = load_file(tmp_path / "three" / "model.safetensors")
    assert any(not torch.equal(one[k], three[k]) for k in one)
    assert not math.isnan(float(sum(t.sum() for t in one.values())))
