"""evomm.merge.methods_geometric against mergekit 0.1.5's own implementations, plus recipes.

nuslerp, multislerp, karcher, model_stock, nearswap, arcee_fusion and passthrough: each
function against mergekit's method called in-process on the same tensors, the registry's
parameter checks, and each method through a recipe and `evomm merge` (compared with
mergekit's `run_merge` on the same YAML).
"""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomm.errors import ConfigError, ShapeMismatchError
from evomm.merge import methods as M
from evomm.merge import methods_geometric as G

mk_registry = pytest.importorskip("mergekit.merge_methods.registry")
from mergekit.merge_methods.base import TensorGroup  # noqa: E402

ATOL = 1e-5


def _mergekit(name, tensors, base_index=None, **parameters):
    group = TensorGroup.from_tensors(list(tensors), base_index=base_index)
    return mk_registry.get(name)([group], parameters=parameters)[0]


def _close(ours, theirs):
    assert ours.dtype == torch.float32
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs.float(), atol=ATOL, rtol=0)


def _sources(seed=0, shape=(48, 40), n=3, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    return base, [base + scale * torch.randn(shape, generator=gen) for _ in range(n)]


def _randn(seed, *shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- nuslerp

NUSLERP_VARIANTS = [(True, False), (False, False), (False, True), (True, True)]  # (flatten, row_wise)


@pytest.mark.parametrize("flatten,row_wise", NUSLERP_VARIANTS)
@pytest.mark.parametrize("weights", [[0.3, 0.7], [1.0, 0.0], [0.0, 1.0], [0.5, -0.5], [2.0, 1.0], [-0.4, 1.2]])
@pytest.mark.parametrize("with_base", [False, True])
def test_nuslerp_matches_mergekit(flatten, row_wise, weights, with_base):
    base, models = _sources(1, n=2)
    ours = G.nuslerp(models, weights, nuslerp_row_wise=row_wise, nuslerp_flatten=flatten,
                     base=base if with_base else None)
    inputs, index = ([base, *models], 0) if with_base else (models, None)
    theirs = _mergekit("nuslerp", inputs, base_index=index, weight=weights, nuslerp_row_wise=row_wise,
                       nuslerp_flatten=flatten)
    _close(ours, theirs)


@pytest.mark.parametrize("flatten,row_wise", NUSLERP_VARIANTS)
@pytest.mark.parametrize("shape", [(64,), (6, 5, 4)])
def test_nuslerp_other_ranks_match_mergekit(flatten, row_wise, shape):
    a, b = _randn(2, *shape), _randn(3, *shape)
    ours = G.nuslerp([a, b], [0.4, 0.6], row_wise, flatten)
    _close(ours, _mergekit("nuslerp", [a, b], weight=[0.4, 0.6], nuslerp_row_wise=row_wise, nuslerp_flatten=flatten))


@pytest.mark.parametrize("flatten,row_wise", NUSLERP_VARIANTS)
def test_nuslerp_colinear_and_zero_match_mergekit(flatten, row_wise):
    a = _randn(4, 12, 10)
    nearly = 2.5 * a + 1e-6 * _randn(5, 12, 10)
    rows_mixed = a.clone()
    rows_mixed[:4] *= -1.0  # some rows antiparallel, the rest parallel
    rows_zero = a.clone()
    rows_zero[2] = 0.0
    rows_zero[:, 3] = 0.0
    for b in (2.5 * a, nearly, -a, torch.zeros_like(a), rows_mixed, rows_zero):
        for weights in ([0.7, 0.3], [0.2, 0.8], [1.0, 0.0]):
            ours = G.nuslerp([a, b], weights, row_wise, flatten)
            _close(ours, _mergekit("nuslerp", [a, b], weight=weights, nuslerp_row_wise=row_wise,
                                   nuslerp_flatten=flatten))
    # colinear inputs interpolate linearly; t = w2 / (w1 + w2)
    torch.testing.assert_close(G.nuslerp([a, 2.5 * a], [0.5, 0.5]), 1.75 * a)


def test_nuslerp_endpoints_and_spec():
    base, (a, b) = _sources(6, n=2)
    torch.testing.assert_close(G.nuslerp([a, b], [1.0, 0.0]), a)
    torch.testing.assert_close(G.nuslerp([a, b], [0.0, 3.0]), b, atol=1e-6, rtol=0)
    torch.testing.assert_close(G.nuslerp([a, b], [0.0, 1.0], base=base), b, atol=1e-6, rtol=0)
    spec = M.METHODS["nuslerp"]
    assert not spec.needs_base and spec.per_model_params == ("weight",) and spec.required == ("weight",)
    assert spec.defaults == {"nuslerp_row_wise": False, "nuslerp_flatten": True}
    out = spec(None, [a, b], {"weight": [0.3, 0.9]}, {"nuslerp_flatten": False})
    torch.testing.assert_close(out, G.nuslerp([a, b], [0.3, 0.9], nuslerp_flatten=False))
    with_base = spec(base, [a, b], {"weight": [0.3, 0.9]})
    torch.testing.assert_close(with_base, G.nuslerp([a, b], [0.3, 0.9], base=base))


# ----------------------------------------------------------------------------- multislerp


@pytest.mark.parametrize("weights", [[0.6, 0.4], [0.2, 0.5, 0.3], [1.0, 2.0, 0.5], [0.7, -0.2, 0.5], [1.0, 0.0, 0.0]])
@pytest.mark.parametrize("normalize_weights", [True, False])
@pytest.mark.parametrize("with_base", [False, True])
def test_multislerp_matches_mergekit(weights, normalize_weights, with_base):
    base, models = _sources(7, n=len(weights))
    ours = G.multislerp(models, weights, normalize_weights=normalize_weights, base=base if with_base else None)
    inputs, index = ([base, *models], 0) if with_base else (models, None)
    theirs = _mergekit("multislerp", inputs, base_index=index, weight=weights, normalize_weights=normalize_weights)
    _close(ours, theirs)


def test_multislerp_edge_cases_match_mergekit():
    a, b = _randn(8, 30, 20), _randn(9, 30, 20)
    cases = [
        ([a], [0.4]),  # one model: returned unchanged
        ([a, 2.5 * a], [0.5, 0.5]),  # colinear
        ([a, -a], [0.5, 0.5]),  # antipodal, balanced: linear fallback
        ([a, -a], [0.3, 0.7]),  # antipodal, unbalanced
        ([a, torch.zeros_like(a)], [0.5, 0.5]),  # a zero tensor
        ([a, b, torch.zeros_like(a)], [0.2, 0.3, 0.5]),
        ([a, b], [1.0, 0.0]),
    ]
    for tensors, weights in cases:
        _close(G.multislerp(tensors, weights), _mergekit("multislerp", tensors, weight=weights))
        _close(G.multislerp(tensors, weights, eps=1e-4),
               _mergekit("multislerp", tensors, weight=weights, eps=1e-4))


def test_multislerp_bad_inputs():
    a = _randn(10, 50)
    with pytest.raises(ConfigError, match="cancel out"):  # mergekit raises ValueError here too
        G.multislerp([a, -a, torch.zeros_like(a)], [0.5, 0.5, 0.0])
    with pytest.raises(ValueError):
        _mergekit("multislerp", [a, -a, torch.zeros_like(a)], weight=[0.5, 0.5, 0.0])
    with pytest.raises(ConfigError, match="sum to 0"):
        G.multislerp([a, 2 * a], [1.0, -1.0])
    torch.testing.assert_close(G.multislerp([a, 2 * a], [1.0, -1.0], normalize_weights=False),
                               _mergekit("multislerp", [a, 2 * a], weight=[1.0, -1.0], normalize_weights=False))


# ----------------------------------------------------------------------------- karcher


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("spread", [0.05, 1.0])
def test_karcher_matches_mergekit(n, spread):
    _, models = _sources(11, n=n, scale=spread)
    _close(G.karcher(models), _mergekit("karcher", models))


def test_karcher_parameters_and_edge_cases_match_mergekit():
    base, models = _sources(12, n=3, scale=0.5)
    for max_iter, tol in ((0, 1e-5), (1, 1e-5), (3, 1e-3), (50, 1e-8), (10, 0.0)):
        _close(G.karcher(models, max_iter=max_iter, tol=tol),
               _mergekit("karcher", models, max_iter=max_iter, tol=tol))
    a = models[0]
    cases = [
        [a],
        [a, a.clone()],  # identical: every angle is 0
        [a, 3.0 * a],  # colinear
        [a, torch.zeros_like(a)],  # a zero tensor: left out of the direction, counted in the norm
        [a, models[1], torch.zeros_like(a)],
        [torch.zeros_like(a), torch.zeros_like(a)],
        [a, 1e-7 * models[1]],  # norm below tol
        [a.reshape(-1)[:7], models[1].reshape(-1)[:7]],
    ]
    for tensors in cases:
        _close(G.karcher(tensors), _mergekit("karcher", tensors))
    # a base model is one more input for karcher, in evomm as in mergekit
    _close(G.karcher([*models, base]), _mergekit("karcher", [base, *models], base_index=0))


def test_karcher_mean_of_equal_norm_pair_is_the_arc_midpoint():
    a, b = _randn(13, 100), _randn(14, 100)
    b = b / b.norm() * a.norm()
    torch.testing.assert_close(G.karcher([a, b]), M.slerp(a, b, 0.5), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- model_stock


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("shape", [(48, 40), (64,), (6, 5, 4)])
def test_model_stock_matches_mergekit(n, filter_wise, shape):
    base, models = _sources(15, shape=shape, n=n)
    ours = G.model_stock(base, models, filter_wise=filter_wise)
    _close(ours, _mergekit("model_stock", [base, *models], base_index=0, filter_wise=filter_wise))


def test_model_stock_edge_cases_match_mergekit():
    base, (a, b, c) = _sources(16, n=3)
    d = a - base
    cases = [
        [base.clone(), base.clone()],  # no task vectors: the base
        [a, base.clone()],  # one zero task vector
        [a, base - d],  # opposite task vectors, 2 models: 1 + cos = 0, the base is kept
        [a, base + 2 * d],  # colinear task vectors: t = 1, the average
        [a, b, base - (b - base) * 0.5],
    ]
    rows_opposite = b.clone()
    rows_opposite[:5] = (base - d)[:5]
    cases.append([a, rows_opposite])  # filter-wise: some rows singular
    for models in cases:
        for filter_wise in (False, True):
            _close(G.model_stock(base, models, filter_wise),
                   _mergekit("model_stock", [base, *models], base_index=0, filter_wise=filter_wise))
    torch.testing.assert_close(G.model_stock(base, [a, base - d]), base)


# ----------------------------------------------------------------------------- nearswap


@pytest.mark.parametrize("t", [0.0, 1e-4, 0.01, 0.05, 0.2, 10.0, -0.01])
def test_nearswap_matches_mergekit(t):
    base, models = _sources(17, n=1)
    _close(G.nearswap(base, models, t), _mergekit("nearswap", [base, *models], base_index=0, t=t))


def test_nearswap_edges():
    base, (a,) = _sources(18, n=1)
    torch.testing.assert_close(G.nearswap(base, [a], 0.0), base)
    torch.testing.assert_close(G.nearswap(base, [a], 100.0), a)
    same = G.nearswap(base, [base.clone()], 0.01)
    torch.testing.assert_close(same, base)
    _close(same, _mergekit("nearswap", [base, base.clone()], base_index=0, t=0.01))
    zeros = torch.zeros_like(base)
    _close(G.nearswap(zeros, [a], 0.5), _mergekit("nearswap", [zeros, a], base_index=0, t=0.5))


# ----------------------------------------------------------------------------- arcee_fusion


@pytest.mark.parametrize("shape,scale", [((48, 40), 0.05), ((128, 96), 0.5), ((64,), 0.1), ((6, 5, 4), 0.2),
                                         ((3,), 0.1), ((1,), 0.1)])
def test_arcee_fusion_matches_mergekit(shape, scale):
    base, models = _sources(19, shape=shape, n=1, scale=scale)
    ours = G.arcee_fusion(base, models)
    _close(ours, _mergekit("arcee_fusion", [base, *models], base_index=0))
    assert not torch.equal(ours, models[0]) or ours.numel() < 4


def test_arcee_fusion_edges():
    base, (a,) = _sources(20, n=1)
    for other in (base.clone(), torch.zeros_like(base), a.clone()):
        _close(G.arcee_fusion(base, [other]), _mergekit("arcee_fusion", [base, other], base_index=0))
    torch.testing.assert_close(G.arcee_fusion(base, [base.clone()]), base)
    # an outlier change is taken, small changes are not
    b = base.clone()
    b[3, 4] += 5.0
    fused = G.arcee_fusion(base, [b + 1e-4 * a])
    assert fused[3, 4] == (b + 1e-4 * a)[3, 4]
    assert int((fused != base).sum()) < base.numel() // 4
    assert G.outlier_threshold(torch.arange(9.0)) == 4.0 + 1.5 * (6.0 - 2.0)


# ----------------------------------------------------------------------------- passthrough


@pytest.mark.parametrize("scale", [None, 1.0, 0.5, -2.0, 0.0])
def test_passthrough_matches_mergekit(scale):
    (x,) = _sources(21, n=1)[1]
    ours = G.passthrough([x], [1.0 if scale is None else scale])
    theirs = _mergekit("passthrough", [x]) if scale is None else _mergekit("passthrough", [x], scale=[scale])
    _close(ours, theirs)
    if scale in (None, 1.0):
        assert torch.equal(ours, x)
    spec = M.METHODS["passthrough"]
    assert spec.required == () and spec.defaults == {"scale": 1.0}
    assert torch.equal(spec(None, [x], {}), x)
    torch.testing.assert_close(spec(None, [x], {"scale": [0.25]}), 0.25 * x)


# ----------------------------------------------------------------------------- registry and errors


def test_registered_with_mergekit_names_and_defaults():
    for spec in G.SPECS:
        assert M.METHODS[spec.name] is spec
    expect = {  # name: (needs_base, min_models, max_models, per-model params, defaults)
        "nuslerp": (False, 2, 2, ("weight",), {"nuslerp_row_wise": False, "nuslerp_flatten": True}),
        "multislerp": (False, 1, None, ("weight",), {"normalize_weights": True, "eps": 1e-8}),
        "karcher": (False, 1, None, (), {"max_iter": 10, "tol": 1e-5}),
        "model_stock": (True, 2, None, (), {"filter_wise": False}),
        "nearswap": (True, 1, 1, (), {}),
        "arcee_fusion": (True, 1, 1, (), {}),
        "passthrough": (False, 1, 1, ("scale",), {"scale": 1.0}),
    }
    for name, (needs_base, lo, hi, per_model, defaults) in expect.items():
        spec = M.METHODS[name]
        assert (spec.needs_base, spec.min_models, spec.max_models) == (needs_base, lo, hi), name
        assert spec.per_model_params == per_model and spec.defaults == defaults, name
        mk = mk_registry.get(name).spec
        mk_defaults = {p.name: p.default for p in mk.parameters if not p.required}
        if name == "passthrough":  # mergekit's scale None (unscaled) is our 1.0
            mk_defaults["scale"] = 1.0
        assert defaults == mk_defaults, name
        assert set(spec.per_model_params) | set(spec.global_params) == {p.name for p in mk.parameters}, name
    assert M.METHODS["nearswap"].required == ("t",)
    assert M.METHODS["nuslerp"].required == M.METHODS["multislerp"].required == ("weight",)
    # EVOLVABLE: the per-model parameters (and nearswap's method-wide t, like slerp's)
    assert set(G.EVOLVABLE) == {"nuslerp", "multislerp", "nearswap", "passthrough"}
    for name, bounds in G.EVOLVABLE.items():
        spec = M.METHODS[name]
        assert set(bounds) == set(spec.per_model_params) | ({"t"} if name == "nearswap" else set()), name
        assert all(lo < hi for lo, hi in bounds.values())


def test_evolvable_bounds_keep_methods_valid():
    base, models = _sources(22, n=3)
    for corner in (0, 1):
        w = [G.EVOLVABLE["nuslerp"]["weight"][corner]] * 2
        assert torch.isfinite(G.nuslerp(models[:2], w)).all()
        w = [G.EVOLVABLE["multislerp"]["weight"][corner]] * 3
        assert torch.isfinite(G.multislerp(models, w)).all()
        s = [G.EVOLVABLE["passthrough"]["scale"][corner]]
        assert torch.isfinite(G.passthrough(models[:1], s)).all()
        t = G.EVOLVABLE["nearswap"]["t"][corner]
        assert torch.isfinite(G.nearswap(base, models[:1], t)).all()
    torch.testing.assert_close(G.nearswap(base, models[:1], G.EVOLVABLE["nearswap"]["t"][0]), base)


def test_bad_parameters_and_model_counts_are_config_errors():
    base, models = _sources(23, n=3)
    a, b, c = models
    bad = [
        ("nuslerp", None, [a], {"weight": [1.0]}, {}, "merges 2 model"),
        ("nuslerp", None, [a, b, c], {"weight": [1.0] * 3}, {}, "merges 2 model"),
        ("nuslerp", None, [a, b], {}, {}, "'weight' is required"),
        ("nuslerp", None, [a, b], {"weight": [1.0]}, {}, "expected 2 values"),
        ("nuslerp", None, [a, b], {"weight": [1.0, 1.0]}, {"t": 0.5}, "unknown parameter 't'"),
        ("multislerp", None, [a, b], {"weight": [0.5, -0.5]}, {}, "sum to 0"),
        ("multislerp", None, [a, b], {}, {}, "'weight' is required"),
        ("karcher", None, [a, b], {}, {"max_iter": -1}, "max_iter"),
        ("karcher", None, [a, b], {}, {"max_iter": 2.5}, "max_iter"),
        ("karcher", None, [a, b], {}, {"tol": -1.0}, "tol"),
        ("karcher", None, [a, b], {"weight": [1.0, 1.0]}, {}, "unknown per-model parameter 'weight'"),
        ("model_stock", base, [a], {}, {}, "at least 2"),
        ("model_stock", None, [a, b], {}, {}, "needs a base"),
        ("nearswap", base, [a], {}, {}, "'t' is required"),
        ("nearswap", base, [a, b], {}, {"t": 0.1}, "1 model"),
        ("nearswap", None, [a], {}, {"t": 0.1}, "needs a base"),
        ("arcee_fusion", base, [a, b], {}, {}, "1 model"),
        ("arcee_fusion", base, [a], {}, {"t": 0.1}, "unknown parameter 't'"),
        ("passthrough", None, [a, b], {}, {}, "1 model"),
        ("passthrough", None, [a], {"weight": [1.0]}, {}, "unknown per-model parameter 'weight'"),
    ]
    for name, base_t, tensors, per_model, global_, match in bad:
        with pytest.raises(ConfigError, match=match):
            M.METHODS[name](base_t, tensors, per_model, global_)
    # the functions check their model counts too
    with pytest.raises(ConfigError):
        G.nuslerp([a], [1.0])
    with pytest.raises(ConfigError):
        G.model_stock(base, [a])
    with pytest.raises(ConfigError):
        G.passthrough([a, b], [1.0, 1.0])
    with pytest.raises(ShapeMismatchError):
        G.karcher([a, torch.zeros(3)])
    with pytest.raises(ShapeMismatchError):
        G.nuslerp([a, b], [1, 1], base=torch.zeros(3))


# ----------------------------------------------------------------------------- recipes and `evomm merge`


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    from testkit.merge_examples import make_llm_family

    paths = make_llm_family(tmp_path_factory.mktemp("geo"), n_finetunes=3, tokenizer=False)
    return {k: str(v) for k, v in paths.items()}


def _recipes(p):
    base, a, b, c = p["base"], p["ft1"], p["ft2"], p["ft3"]
    return {
        "nuslerp": {
            "merge_method": "nuslerp", "dtype": "float32",
            "models": [{"model": a, "parameters": {"weight": [0.2, 0.8]}},
                       {"model": b, "parameters": {"weight": [{"filter": "mlp", "value": 0.3}, {"value": 0.6}]}}],
        },
        "nuslerp_rows": {
            "merge_method": "nuslerp", "dtype": "float32",
            "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": [{"filter": "self_attn", "value": True},
                                                                          {"value": False}]},
            "models": [{"model": a, "parameters": {"weight": 0.5}}, {"model": b, "parameters": {"weight": 0.5}}],
        },
        "multislerp": {
            "merge_method": "multislerp", "dtype": "float32",
            "models": [{"model": a, "parameters": {"weight": [0.2, 0.6]}},
                       {"model": b, "parameters": {"weight": 0.3}}, {"model": c, "parameters": {"weight": 0.5}}],
        },
        "karcher": {
            "merge_method": "karcher", "base_model": base, "dtype": "float32",
            "parameters": {"max_iter": 5, "tol": 1e-6},
            "models": [{"model": a}, {"model": b}, {"model": c}],
        },
        "model_stock": {
            "merge_method": "model_stock", "base_model": base, "dtype": "float32",
            "models": [{"model": a}, {"model": b}, {"model": c}],
        },
        "model_stock_filter_wise": {
            "merge_method": "model_stock", "base_model": base, "dtype": "float32",
            "parameters": {"filter_wise": True}, "models": [{"model": a}, {"model": b}],
        },
        "nearswap": {
            "merge_method": "nearswap", "base_model": base, "dtype": "float32",
            "parameters": {"t": [{"filter": "mlp", "value": [0.001, 0.05]}, {"value": 0.01}]},
            "models": [{"model": base}, {"model": a}],
        },
        "arcee_fusion": {
            "merge_method": "arcee_fusion", "base_model": base, "dtype": "float32",
            "models": [{"model": a}],
        },
        "passthrough": {
            "merge_method": "passthrough", "dtype": "float32",
            "models": [{"model": a, "parameters": {"scale": [{"filter": "o_proj", "value": 0.5},
                                                             {"filter": "down_proj", "value": [0.0, 2.0]},
                                                             {"value": 1.0}]}}],
        },
    }


@pytest.mark.parametrize("method", ["nuslerp", "nuslerp_rows", "multislerp", "karcher", "model_stock",
                                    "model_stock_filter_wise", "nearswap", "arcee_fusion", "passthrough"])
def test_evomm_merge_matches_mergekit(family, tmp_path, method):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    from evomm.cli import main
    from evomm.merge.recipe import Recipe

    cfg = _recipes(family)[method]
    recipe = Recipe.from_dict(cfg)
    assert recipe.merge_method == cfg["merge_method"]
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "recipe.yml"), str(tmp_path / "evomm"), "--no-progress"]) == 0
    run_merge(MergeConfiguration.model_validate(cfg), str(tmp_path / "mergekit"),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    got = load_file(tmp_path / "evomm" / "model.safetensors")
    expected = load_file(tmp_path / "mergekit" / "model.safetensors")
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=ATOL, rtol=0, msg=name)
    source = load_file(f"{family['ft1']}/model.safetensors")
    assert not torch.equal(got["model.layers.0.mlp.up_proj.weight"], source["model.layers.0.mlp.up_proj.weight"]) \
        or method == "passthrough"
    if method == "passthrough":
        name = "model.layers.1.self_attn.o_proj.weight"
        torch.testing.assert_close(got[name], 0.5 * source[name])
        assert torch.equal(got["model.norm.weight"], source["model.norm.weight"])
    # the saved recipe re-runs to the same weights
    assert main(["merge", str(tmp_path / "evomm" / "evomm_recipe.yml"), str(tmp_path / "again"),
                 "--no-progress"]) == 0
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(got[k], again[k]) for k in got)


def test_bad_recipes_are_config_errors(family, tmp_path):
    from evomm.merge.recipe import Recipe

    base, a, b, c = family["base"], family["ft1"], family["ft2"], family["ft3"]
    bad = [
        ({"merge_method": "nearswap", "models": [{"model": a}, {"model": b}], "parameters": {"t": 0.1}},
         "base_model: required"),
        ({"merge_method": "nearswap", "base_model": base, "models": [{"model": a}, {"model": b}],
          "parameters": {"t": 0.1}}, "exactly 1"),
        ({"merge_method": "arcee_fusion", "base_model": base, "models": [{"model": a}, {"model": b}]}, "exactly 1"),
        ({"merge_method": "model_stock", "base_model": base, "models": [{"model": a}]}, "at least 2"),
        ({"merge_method": "passthrough", "models": [{"model": a}, {"model": b}]}, "exactly 1"),
        ({"merge_method": "nuslerp", "models": [{"model": a, "parameters": {"weight": 1}}]}, "exactly 2"),
        ({"merge_method": "nuslerp", "models": [{"model": a, "parameters": {"weight": 1}}, {"model": b}]},
         "weight: required"),
        ({"merge_method": "nuslerp", "models": [{"model": a, "parameters": {"weight": 1}},
                                                {"model": b, "parameters": {"weight": 1}}],
          "parameters": {"filter_wise": True}}, "unknown parameter"),
        ({"merge_method": "model_stock", "base_model": base, "models": [{"model": a}, {"model": b}],
          "parameters": {"weight": 0.5}}, "unknown parameter"),
        ({"merge_method": "karcher", "models": [{"model": a, "parameters": {"max_iter": 3}}, {"model": b}]},
         "applies to the whole merge"),
    ]
    for data, match in bad:
        with pytest.raises(ConfigError, match=match):
            Recipe.from_dict(data)
    # a missing method-wide parameter passes recipe validation (as slerp's t does today) and
    # stops `evomm merge` before anything is written
    from evomm.merge.execute import run_merge

    no_t = Recipe.from_dict({"merge_method": "nearswap", "base_model": base, "models": [{"model": a}]})
    with pytest.raises(ConfigError, match="'t' is required"):
        run_merge(no_t, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # every method validates with its parameters given at the top level as well
    ok = [
        {"merge_method": "multislerp", "parameters": {"weight": 0.5, "normalize_weights": False, "eps": 1e-6},
         "models": [{"model": a}, {"model": b}, {"model": c}]},
        {"merge_method": "passthrough", "parameters": {"scale": 0.5}, "models": [{"model": a}]},
        {"merge_method": "karcher", "models": [{"model": a}, {"model": b}]},
    ]
    for data in ok:
        Recipe.from_dict(data)


@pytest.mark.parametrize("method", ["nuslerp", "multislerp"])
def test_optional_base_through_a_recipe_matches_mergekit(family, tmp_path, method):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge as mk_run_merge

    from evomm.merge.execute import run_merge
    from evomm.merge.recipe import Recipe

    cfg = {"merge_method": method, "base_model": family["base"], "dtype": "float32",
           "parameters": {"weight": 0.5},
           "models": [{"model": family["ft1"], "parameters": {"weight": 0.3}}, {"model": family["ft2"]}]}
    mk_run_merge(MergeConfiguration.model_validate(cfg), str(tmp_path / "mergekit"),
                 MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    run_merge(Recipe.from_dict(cfg), tmp_path / "evomm", progress=False)
    got = load_file(tmp_path / "evomm" / "model.safetensors")
    expected = load_file(tmp_path / "mergekit" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=ATOL, rtol=0, msg=name)
