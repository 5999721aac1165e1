"""evomm.merge.methods against mergekit 0.1.5's own implementations, plus properties."""

from __future__ import annotations

import math

import pytest
import torch

from evomm.errors import ConfigError, ShapeMismatchError
from evomm.merge import methods as M

mk_registry = pytest.importorskip("mergekit.merge_methods.registry")
from mergekit.merge_methods.base import TensorGroup  # noqa: E402

ATOL = 1e-6


def _mergekit(name, tensors, base_index=None, **parameters):
    group = TensorGroup.from_tensors(list(tensors), base_index=base_index)
    return mk_registry.get(name)([group], parameters=parameters)[0]


def _sources(seed=0, shape=(48, 40), n=3, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    return base, [base + scale * torch.randn(shape, generator=gen) for _ in range(n)]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weights", [[0.3, 0.5, 0.2], [1.0, -0.4, 0.7], [0.9, 0.6, 0.8]])
def test_linear_matches_mergekit(weights, normalize):
    _, models = _sources()
    ours = M.linear(models, weights, normalize=normalize)
    theirs = _mergekit("linear", models, weight=weights, normalize=normalize)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_linear_zero_weight_sum_is_an_error_when_normalizing():
    _, models = _sources(n=2)
    with pytest.raises(ConfigError, match="sum to 0"):
        M.linear(models, [1.0, -1.0])
    torch.testing.assert_close(M.linear(models, [1.0, -1.0], normalize=False), models[0] - models[1])


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("lambda_", [1.0, 0.7])
@pytest.mark.parametrize("weights", [[0.3, 0.5, 0.2], [1.0, -1.0, 0.0], [0.9, -0.6, 1.3]])
def test_task_arithmetic_matches_mergekit(weights, normalize, lambda_):
    base, models = _sources(1)
    ours = M.task_arithmetic(base, models, weights, normalize=normalize, lambda_=lambda_)
    theirs = _mergekit(
        "task_arithmetic", [base, *models], base_index=0, weight=weights, normalize=normalize, **{"lambda": lambda_}
    )
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(
    "weights,densities",
    [
        ([0.5, 0.3, 0.8], [0.5, 0.7, 0.2]),
        ([1.0, -0.5, 0.4], [1.0, 0.3, 0.0]),
        ([1.0, -1.0, 0.5], [0.9, 0.9, 0.001]),
        ([0.2, 0.2, 0.2], [1.0, 1.0, 1.0]),
    ],
)
@pytest.mark.parametrize("lambda_", [1.0, 1.5])
def test_ties_matches_mergekit(weights, densities, normalize, lambda_):
    base, models = _sources(2)
    ours = M.ties(base, models, weights, densities, normalize=normalize, lambda_=lambda_)
    theirs = _mergekit(
        "ties", [base, *models], base_index=0, weight=weights, density=densities, normalize=normalize,
        **{"lambda": lambda_},
    )
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_ties_one_model_full_density_is_task_arithmetic():
    base, models = _sources(3, n=1)
    for normalize in (True, False):
        ties = M.ties(base, models, [0.7], [1.0], normalize=normalize)
        ta = M.task_arithmetic(base, models, [0.7], normalize=normalize)
        torch.testing.assert_close(ties, ta, atol=ATOL, rtol=0)


def test_ties_trim_keeps_top_k_magnitudes():
    delta = torch.randn(1000, generator=torch.Generator().manual_seed(4))
    kept = M.trim_by_magnitude(delta, 0.25)
    assert int((kept != 0).sum()) == M.top_k_count(0.25, 1000) == 250
    assert kept.abs().max() == delta.abs().max()
    assert float(kept[kept != 0].abs().min()) >= float(delta.abs().sort().values[-250])


def test_ties_sign_election_by_mass_not_count():
    base = torch.zeros(1)
    # two small positive votes against one large negative vote: the mass is negative
    models = [torch.tensor([0.1]), torch.tensor([0.1]), torch.tensor([-1.0])]
    out = M.ties(base, models, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], normalize=True)
    torch.testing.assert_close(out, torch.tensor([-1.0]))


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_slerp_matches_mergekit(t):
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(32, 24, generator=gen), torch.randn(32, 24, generator=gen)
    ours = M.slerp(a, b, t)
    theirs = _mergekit("slerp", [a, b], base_index=0, t=t)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_slerp_colinear_and_zero_tensors_match_mergekit():
    a = torch.randn(64, generator=torch.Generator().manual_seed(6))
    for b in (2.5 * a, -a, torch.zeros(64)):
        for t in (0.3, 0.8):
            theirs = _mergekit("slerp", [a, b], base_index=0, t=t)
            torch.testing.assert_close(M.slerp(a, b, t), theirs, atol=ATOL, rtol=0)
    torch.testing.assert_close(M.slerp(a, 2.5 * a, 0.5), 1.75 * a)  # linear for colinear inputs


def test_slerp_endpoints_and_norm():
    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(100, generator=gen), torch.randn(100, generator=gen)
    torch.testing.assert_close(M.slerp(a, b, 0.0), a)
    torch.testing.assert_close(M.slerp(a, b, 1.0), b, atol=1e-5, rtol=0)
    b = b / b.norm() * a.norm()  # equal norms: the arc keeps the norm, unlike the chord
    assert math.isclose(float(M.slerp(a, b, 0.5).norm()), float(a.norm()), rel_tol=1e-5)
    assert float(torch.lerp(a, b, 0.5).norm()) < 0.95 * float(a.norm())


def test_dare_keeps_density_share_and_rescales():
    delta = torch.randn(200_000, generator=torch.Generator().manual_seed(8))
    for density in (0.1, 0.5, 0.9):
        dropped = M.dare_drop(delta, density, seed=3, model_index=0, rescale=True)
        kept = dropped != 0
        assert abs(float(kept.float().mean()) - density) < 0.005
        torch.testing.assert_close(dropped[kept], delta[kept] / density)
        plain = M.dare_drop(delta, density, seed=3, model_index=0, rescale=False)
        torch.testing.assert_close(plain[kept], delta[kept])
        assert not plain[~kept].any()
    assert M.dare_drop(delta, 1.0, 3, 0, True) is delta
    assert not M.dare_drop(delta, 0.0, 3, 0, True).any()


def test_dare_is_deterministic_by_seed():
    base, models = _sources(9)
    args = (base, models, [0.5, 0.3, 0.4], [0.4, 0.6, 0.5])
    for fn in (M.dare_ties, M.dare_linear):
        same = fn(*args, seed=11)
        assert torch.equal(same, fn(*args, seed=11))
        assert not torch.equal(same, fn(*args, seed=12))
    # each merged model gets its own mask stream
    m0 = M.dare_keep_mask(11, 0, (1000,), 0.5)
    m1 = M.dare_keep_mask(11, 1, (1000,), 0.5)
    assert not torch.equal(m0, m1)
    assert torch.equal(m0, M.dare_keep_mask(11, 0, (1000,), 0.5))


def test_dare_ties_is_ties_election_over_dropped_deltas():
    base, models = _sources(10)
    weights, densities = [0.5, -0.3, 0.9], [0.4, 0.6, 0.5]
    out = M.dare_ties(base, models, weights, densities, seed=5, normalize=True, lambda_=0.8)
    dropped = [base + M.dare_drop(m - base, d, 5, i, True) for i, (m, d) in enumerate(zip(models, densities))]
    expected = M.ties(base, dropped, weights, [1.0] * 3, normalize=True, lambda_=0.8)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    # with density 1 nothing is dropped: dare_ties == ties with density 1, dare_linear == task arithmetic
    full = M.dare_ties(base, models, weights, [1.0] * 3, seed=5)
    torch.testing.assert_close(full, M.ties(base, models, weights, [1.0] * 3, normalize=False), atol=ATOL, rtol=0)
    lin = M.dare_linear(base, models, weights, [1.0] * 3, seed=5, lambda_=0.5)
    torch.testing.assert_close(lin, M.task_arithmetic(base, models, weights, lambda_=0.5), atol=ATOL, rtol=0)


def test_dare_linear_matches_mergekit_in_expectation():
    """Averaged over masks, DARE equals task arithmetic (the rescale keeps it unbiased)."""
    base, models = _sources(12, shape=(4000,), n=2)
    weights, densities = [0.6, 0.4], [0.3, 0.7]
    mean = sum(M.dare_linear(base, models, weights, densities, seed=s) for s in range(200)) / 200
    ta = M.task_arithmetic(base, models, weights)
    assert float((mean - ta).abs().mean()) < 0.1 * float((ta - base).abs().mean())


def test_method_registry_binds_recipe_names():
    base, models = _sources(13)
    spec = M.METHODS["ties"]
    assert spec.needs_base and spec.per_model_params == ("weight", "density")
    assert spec.required == ("weight",)
    assert spec.defaults == {"density": 1.0, "normalize": True, "lambda": 1.0, "tie_break": "mergekit",
                             "rescale": False}
    out = spec(base, models, {"weight": [0.2, 0.3, 0.5], "density": [0.5, 0.5, 0.5]}, {"lambda": 0.9, "int8_mask": True})
    torch.testing.assert_close(out, M.ties(base, models, [0.2, 0.3, 0.5], [0.5] * 3, lambda_=0.9))
    assert M.METHODS["slerp"].required == ("t",)
    torch.testing.assert_close(M.METHODS["slerp"](base, models[:1], {}, {"t": 0.3}), M.slerp(base, models[0], 0.3))
    with pytest.raises(ConfigError, match="unknown parameter 'gamma'"):
        spec(base, models, {"weight": [1, 1, 1]}, {"gamma": 0.1})
    with pytest.raises(ConfigError, match="'weight' is required"):
        spec(base, models, {}, {})
    with pytest.raises(ConfigError, match="expected 3 values"):
        spec(base, models, {"weight": [1, 1]}, {})
    with pytest.raises(ConfigError, match="tie_break"):
        spec(base, models, {"weight": [1, 1, 1]}, {"tie_break": "nope"})
    with pytest.raises(ConfigError, match="needs a seed"):
        M.METHODS["dare_ties"](base, models, {"weight": [1, 1, 1]})
    with pytest.raises(ConfigError, match="unknown merge method 'nope'"):
        M.method_spec("nope")
    with pytest.raises(ShapeMismatchError):
        M.linear([torch.zeros(3), torch.zeros(4)], [1, 1])


def test_tensor_seed_is_stable_and_name_dependent():
    assert M.tensor_seed(1, "model.layers.0.mlp.up_proj.weight") == M.tensor_seed(1, "model.layers.0.mlp.up_proj.weight")
    assert M.tensor_seed(1, "a") != M.tensor_seed(1, "b") != M.tensor_seed(2, "b")


def test_docs_table_lists_every_method():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "merge_methods.md").read_text()
    for name in M.METHODS:
        assert f"| `{name}` |" in text, f"docs/merge_methods.md has no row for {name}"
