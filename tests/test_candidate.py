"""In-memory candidates (evomm.merge.candidate) equal evomm.merge.methods and write in place."""

from __future__ import annotations

import pytest
import torch

from evomm.errors import ConfigError, MissingTensorError, ShapeMismatchError
from evomm.merge import methods as M
from evomm.merge.candidate import CandidateMaterializer, Route, TensorParams, in_place_params, routes_from_tasks

ATOL = 1e-6
SHAPES = {"emb": (40, 12), "layers.0.w": (24, 20), "layers.1.w": (24, 20), "layers.1.b": (24,), "norm": (12,)}
METHOD_NAMES = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp"]


def _models(n=2, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    models = {"base": base}
    for i in range(n):
        models[f"m{i}"] = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    return models


def _params(method, merged, names, gen):
    """Different parameters for every tensor (as per-layer genomes give them)."""
    out = {}
    for name in names:
        per_model = {
            ref: {"weight": float(torch.rand((), generator=gen)) + 0.1, "density": float(torch.rand((), generator=gen))}
            for ref in merged
        }
        if method == "slerp":
            glob = {"t": float(torch.rand((), generator=gen))}
        elif method == "linear":
            glob = {"normalize": bool(torch.rand((), generator=gen) < 0.7)}
        else:
            glob = {"normalize": bool(torch.rand((), generator=gen) < 0.5), "lambda": 0.5 + float(torch.rand((), generator=gen))}
        out[name] = TensorParams(per_model, glob)
    return out


def _expected(method, models, merged, name, params, seed, rows=None):
    spec = M.METHODS[method]

    def get(ref):
        t = models[ref][name]
        return t if rows is None else t[:rows]

    per_model = {p: [params.per_model[r][p] for r in merged] for p in spec.per_model_params}
    return spec(get("base") if spec.needs_base else None, [get(r) for r in merged], per_model, params.global_,
                seed=M.tensor_seed(seed, name))


def _materializer(method, models, target, **kw):
    sources = models if method != "slerp" else {"base": models["base"], "m0": models["m0"]}
    routes = {k: Route({ref: k for ref in sources}) for k in SHAPES}
    return CandidateMaterializer(target, sources, routes, method, base="base", **kw)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_eager_candidates_equal_methods(method):
    models = _models(n=3)
    target = {k: torch.full(s, float("nan")) for k, s in SHAPES.items()}
    mat = _materializer(method, models, target, compile=False, chunk_size=64)  # small chunks: many per tensor
    gen = torch.Generator().manual_seed(1)
    for seed in (5, 6, 5):  # several candidates into the same tensors; the seed only matters for DARE
        params = _params(method, mat.merged, SHAPES, gen)
        mat.materialize(params, seed=seed)
        for name in SHAPES:
            expected = _expected(method, models, mat.merged, name, params[name], seed)
            torch.testing.assert_close(target[name], expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_compiled_candidates_equal_methods(method):
    models = _models(n=2, seed=2)
    target = {k: torch.empty(s) for k, s in SHAPES.items()}
    mat = _materializer(method, models, target, compile=True)
    params = _params(method, mat.merged, SHAPES, torch.Generator().manual_seed(3))
    mat.materialize(params, seed=9)
    for name in SHAPES:
        torch.testing.assert_close(target[name], _expected(method, models, mat.merged, name, params[name], 9),
                                   atol=ATOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "dare_linear", "slerp"])
def test_compiled_candidates_equal_methods_other_methods(method):
    test_compiled_candidates_equal_methods(method)


def test_groups_share_parameters_and_extreme_densities():
    models = _models(n=2, seed=4)
    target = {k: torch.empty(s) for k, s in SHAPES.items()}
    for method in ("ties", "dare_ties", "dare_linear"):
        mat = _materializer(method, models, target, compile=False)
        # density 1 keeps a task vector whole (and unscaled), density 0 drops it
        shared = TensorParams({"m0": {"weight": 0.6, "density": 1.0}, "m1": {"weight": 0.4, "density": 0.0}},
                              {"normalize": True})
        other = TensorParams({"m0": {"weight": 0.3, "density": 0.35}, "m1": {"weight": 0.9, "density": 0.8}}, {})
        names = list(SHAPES)
        mat.materialize([(names[:3], shared), (names[3:], other)], seed=1)
        for name in names:
            p = shared if name in names[:3] else other
            torch.testing.assert_close(target[name], _expected(method, models, mat.merged, name, p, 1), atol=ATOL, rtol=0)
        base, m0 = models["base"]["emb"], models["m0"]["emb"]
        torch.testing.assert_close(target["emb"], base + (m0 - base) * (0.6 if method == "dare_linear" else 1.0), atol=ATOL, rtol=0)


def test_ties_kept_counts_follow_the_magnitudes():
    # mergekit's order keeps exactly k; keep_all keeps every |x| >= the k-th largest (kthvalue)
    models = _models(n=2, seed=5)
    target = {k: torch.empty(s) for k, s in SHAPES.items()}
    mat = _materializer("ties", models, target, compile=False)
    slot = mat._slots["layers.0.w"]
    delta = models["m1"]["layers.0.w"] - models["base"]["layers.0.w"]
    for density in (0.01, 0.3, 0.5, 0.99):
        threshold = M.magnitude_threshold(delta, density)
        assert mat._kept(slot, 1, density, "keep_all") == int((delta.abs() >= threshold).sum())
        assert mat._kept(slot, 1, density, "mergekit") == M.top_k_count(density, delta.numel())


def test_dare_candidates_rebuild_exactly_from_their_seed():
    models = _models(n=2, seed=6)
    params = _params("dare_ties", ["m0", "m1"], SHAPES, torch.Generator().manual_seed(7))
    outs = {}
    for cache in (True, False):
        target = {k: torch.empty(s) for k, s in SHAPES.items()}
        mat = _materializer("dare_ties", models, target, compile=False, cache_dare_bits=cache)
        for seed in (1, 2, 1):
            mat.materialize(params, seed=seed)
            snapshot = {k: v.clone() for k, v in target.items()}
            if (cache, seed) in outs or (not cache and seed in (1, 2)):
                reference = outs.get((True, seed))
                assert all(torch.equal(snapshot[k], reference[k]) for k in SHAPES)
            outs.setdefault((cache, seed), snapshot)
    assert not torch.equal(outs[(True, 1)]["layers.0.w"], outs[(True, 2)]["layers.0.w"])


def test_unmerged_tensors_and_vocab_rows():
    """Cross-architecture case: the VLM has 4 extra vocab rows and a vision tower, kept as they are."""
    gen = torch.Generator().manual_seed(8)
    llm_base = {"embed": torch.randn(10, 6, generator=gen), "layer": torch.randn(6, 6, generator=gen)}
    llm = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in llm_base.items()}
    vlm = {
        "lm.embed": torch.cat([llm_base["embed"] + 0.1 * torch.randn(10, 6, generator=gen), torch.randn(4, 6, generator=gen)]),
        "lm.layer": llm_base["layer"] + 0.1 * torch.randn(6, 6, generator=gen),
        "vision.w": torch.randn(3, 3, generator=gen),
    }
    models = {"base": llm_base, "vlm": vlm, "llm": llm}
    target = {k: torch.zeros(v.shape) for k, v in vlm.items()}
    routes = {
        "lm.embed": Route({"base": "embed", "vlm": "lm.embed", "llm": "embed"}, rows=10, keep_from="vlm"),
        "lm.layer": Route({"base": "layer", "vlm": "lm.layer", "llm": "layer"}),
        "vision.w": Route({"vlm": "vision.w"}, merge=False),
    }
    mat = CandidateMaterializer(target, models, routes, "task_arithmetic", base="base", compile=False)
    assert mat.merged == ["vlm", "llm"] and mat.merged_names == ["lm.embed", "lm.layer"]
    p = TensorParams({"vlm": {"weight": 0.7}, "llm": {"weight": 0.5}})
    mat.materialize({"lm.embed": p, "lm.layer": p})
    assert torch.equal(target["vision.w"], vlm["vision.w"])
    assert torch.equal(target["lm.embed"][10:], vlm["lm.embed"][10:])
    expected = M.task_arithmetic(llm_base["embed"], [vlm["lm.embed"][:10], llm["embed"]], [0.7, 0.5])
    torch.testing.assert_close(target["lm.embed"][:10], expected, atol=ATOL, rtol=0)


def test_routes_from_planner_tasks():
    class Task:  # the shape of evomm.merge.plan.TensorTask
        def __init__(self, name, merge, inputs=None, rows=None):
            self.name, self.merge, self.inputs, self.rows = name, merge, inputs or {}, rows

    routes = routes_from_tasks([Task("a", True, {"x": "a", "y": "b"}, rows=3), Task("v", False)], primary="x")
    assert routes["a"] == Route({"x": "a", "y": "b"}, merge=True, rows=3, keep_from="x")
    assert routes["v"] == Route({"x": "v"}, merge=False, rows=None, keep_from="x")


def test_writes_a_model_in_place():
    from testkit.tiny import tiny_mistral

    sources = {"base": tiny_mistral(0, 0, 0.0), "a": tiny_mistral(1, 0, 0.02), "b": tiny_mistral(2, 0, 0.02)}
    state = {ref: m.state_dict() for ref, m in sources.items()}
    model = tiny_mistral(3, 0, 0.5)  # the one preallocated model; its own weights get overwritten
    target = in_place_params(model)
    ptrs = {k: v.data_ptr() for k, v in target.items()}
    names = [k for k in state["base"] if k in target]
    routes = {k: Route({ref: k for ref in state}) for k in names}
    mat = CandidateMaterializer(target, state, routes, "ties", base="base", compile=False)
    p = TensorParams({"a": {"weight": 0.5, "density": 0.6}, "b": {"weight": 0.5, "density": 0.4}})
    mat.materialize({k: p for k in names})
    assert {k: v.data_ptr() for k, v in in_place_params(model).items()} == ptrs
    merged = {k: M.ties(state["base"][k], [state["a"][k], state["b"][k]], [0.5, 0.5], [0.6, 0.4]) for k in names}
    reference = tiny_mistral(0, 0, 0.0)
    reference.load_state_dict(merged)
    ids = torch.tensor([[1, 5, 9, 17]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)


def test_low_precision_target_is_cast_on_write():
    models = _models(n=2, seed=9)
    target = {k: torch.empty(s, dtype=torch.bfloat16) for k, s in SHAPES.items()}
    mat = _materializer("linear", models, target, compile=False)
    p = TensorParams({"base": {"weight": 0.2}, "m0": {"weight": 0.3}, "m1": {"weight": 0.5}})
    mat.materialize({k: p for k in SHAPES})
    expected = M.linear([models[r]["layers.0.w"] for r in ("base", "m0", "m1")], [0.2, 0.3, 0.5])
    assert torch.equal(target["layers.0.w"], expected.to(torch.bfloat16))


def test_bad_input_is_a_clear_error():
    models = _models(n=2, seed=10)
    target = {k: torch.empty(s) for k, s in SHAPES.items()}
    mat = _materializer("ties", models, target, compile=False)
    p = TensorParams({"m0": {"weight": 1.0}, "m1": {"weight": 1.0}})
    with pytest.raises(ConfigError, match="no parameters for 4 merged tensor"):
        mat.materialize({"emb": p})
    with pytest.raises(ConfigError, match="'weight' is missing for some"):
        mat.materialize({k: TensorParams({"m0": {"weight": 1.0}}) for k in SHAPES})
    with pytest.raises(MissingTensorError, match="m1 has no nope"):
        CandidateMaterializer(target, models, {"emb": Route({"base": "emb", "m0": "emb", "m1": "nope"})}, "ties", "base")
    bad = dict(models, m1={**models["m1"], "emb": torch.zeros(3, 3)})
    with pytest.raises(ShapeMismatchError, match="emb: m1 has shape"):
        CandidateMaterializer(target, bad, {"emb": Route({"base": "emb", "m0": "emb", "m1": "emb"})}, "ties", "base")
    with pytest.raises(ConfigError, match="needs a base model"):
        CandidateMaterializer(target, models, {}, "ties")
    with pytest.raises(ConfigError, match="slerp: cannot merge 2"):
        CandidateMaterializer(target, models, {}, "slerp", base="base")


def test_mask_bits_drawn_in_pieces_equal_one_draw():
    from evomm.merge.candidate import fill_mask_bits

    out = torch.empty(1001)
    fill_mask_bits(M.dare_bit_stream(3, 1), out, chunk=10)  # 8-value pieces and a partial tail
    assert torch.equal(out, M.draw_mask_bits(M.dare_bit_stream(3, 1), 1001).float())


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_pair_equals_methods(normalize):
    models = _models(n=2, seed=11)
    pair = {"m0": models["m0"], "m1": models["m1"]}
    target = {k: torch.empty(s) for k, s in SHAPES.items()}
    mat = CandidateMaterializer(target, pair, {k: Route({"m0": k, "m1": k}) for k in SHAPES}, "linear", compile=False)
    p = TensorParams({"m0": {"weight": 0.35}, "m1": {"weight": 0.9}}, {"normalize": normalize})
    mat.materialize({k: p for k in SHAPES})
    for k in SHAPES:
        expected = M.linear([pair["m0"][k], pair["m1"][k]], [0.35, 0.9], normalize=normalize)
        torch.testing.assert_close(target[k], expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("compile_", [False, True])
@pytest.mark.parametrize("tie_break", ["mergekit", "keep_all"])
def test_ties_with_tied_magnitudes_equals_methods(compile_, tie_break):
    """Deltas of bf16 checkpoints repeat magnitudes: ties at the k-th are decided alike in both
    paths, in mergekit's argsort order (exactly k kept) or all kept."""
    models = _models(n=2, seed=12)
    for ref in ("m0", "m1"):
        models[ref] = {k: models["base"][k] + torch.round((v - models["base"][k]) * 8) / 8 for k, v in models[ref].items()}
    target = {k: torch.empty(s) for k, s in SHAPES.items()}
    mat = _materializer("ties", models, target, compile=compile_)
    p = TensorParams({"m0": {"weight": 0.7, "density": 0.3}, "m1": {"weight": 0.5, "density": 0.55}},
                     {"normalize": True, "tie_break": tie_break})
    mat.materialize({k: p for k in SHAPES})
    delta = models["m0"]["emb"] - models["base"]["emb"]
    kept = int((M.trim_by_magnitude(delta, 0.3, tie_break=tie_break) != 0).sum())
    k = M.top_k_count(0.3, delta.numel())
    assert kept > k if tie_break == "keep_all" else kept == k
    for k in SHAPES:
        torch.testing.assert_close(target[k], _expected("ties", models, ["m0", "m1"], k, p, 0), atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_bfloat16_storage_equals_methods_on_rounded_inputs(method):
    # a 7B search keeps its state in bfloat16: the result is the method applied to the
    # bfloat16-rounded base and task vectors, computed in float32, and the state is half the size
    models = _models(n=2, seed=3)
    narrow = _materializer(method, models, {k: torch.empty(s) for k, s in SHAPES.items()},
                           compile=False, chunk_size=64, storage_dtype=torch.bfloat16)
    wide = _materializer(method, models, {k: torch.empty(s) for k, s in SHAPES.items()}, compile=False)
    gen = torch.Generator().manual_seed(4)
    params = _params(method, narrow.merged, SHAPES, gen)
    narrow.materialize(params, seed=7)
    wide.materialize(params, seed=7)

    def rounded(ref, name):  # what bfloat16 storage keeps of a source, as a float32 value
        base = models["base"][name]
        if method in ("linear", "slerp") or ref == "base":
            return models[ref][name].bfloat16().float()
        return base.bfloat16().float() + (models[ref][name] - base).bfloat16().float()

    reference = {ref: {name: rounded(ref, name) for name in SHAPES} for ref in models}
    for name in SHAPES:
        expected = _expected(method, reference, narrow.merged, name, params[name], 7)
        torch.testing.assert_close(narrow._slots[name].target.reshape(expected.shape), expected, atol=1e-5, rtol=1e-5)
    state = lambda m: sum(t.element_size() * t.numel() for s in m._slots.values()  # noqa: E731
                          for t in [*([s.base] if s.base is not None else []), *s.inputs, *(s.bits or [])])
    assert state(narrow) * 2 == state(wide) if method not in ("dare_ties", "dare_linear") else state(narrow) < state(wide)
    if method.startswith("dare"):
        assert all(b.dtype == torch.int16 for s in narrow._slots.values() for b in s.bits)


def _method_params(name, merged, seed):
    """Per-model values inside each evolvable parameter's valid range, different per model."""
    from evomm.merge.methods import EVOLVABLE

    gen = torch.Generator().manual_seed(seed)
    per_model = {ref: {} for ref in merged}
    global_ = {}
    for param, (lo, hi) in EVOLVABLE.get(name, {}).items():
        for ref in merged:
            value = lo + (hi - lo) * (0.2 + 0.6 * float(torch.rand((), generator=gen)))
            if param == "t":
                global_["t"] = value
            else:
                per_model[ref][param] = value
    spec = M.METHODS[name]
    if "t" in spec.global_params and "t" not in global_:
        global_["t"] = 0.4
    return TensorParams(per_model, global_)


@pytest.mark.parametrize("method", sorted(set(M.METHODS) - {"linear", "task_arithmetic", "ties", "dare_ties",
                                                             "dare_linear", "slerp"}))
def test_every_other_method_runs_its_own_function_in_memory(method):
    # one formula, one place: the search's candidates are what `evomm merge`'s function gives,
    # tensor by tensor, with its real shape (row-wise methods) and its seed (randomised ones)
    spec = M.METHODS[method]
    n = 1 if spec.max_models == 1 else 2
    models = _models(n=n, seed=21)
    base = "base" if spec.takes_base("base") else None
    sources = models if base else {k: v for k, v in models.items() if k != "base"}
    routes = {k: Route({ref: k for ref in sources}) for k in SHAPES}
    target = {k: torch.full(s, float("nan")) for k, s in SHAPES.items()}
    mat = CandidateMaterializer(target, sources, routes, method, base=base, compile=False,
                                storage_dtype=torch.float32)
    for seed in (3, 4):
        params = {name: _method_params(method, mat.merged, seed) for name in SHAPES}
        mat.materialize(params, seed=seed)
        for name in SHAPES:
            p = params[name]
            per_model = {k: [p.per_model[r][k] for r in mat.merged] for k in (p.per_model[mat.merged[0]] or {})}
            expected = spec(models["base"][name] if base else None, [models[r][name] for r in mat.merged],
                            per_model, p.global_, seed=M.tensor_seed(seed, name) if spec.uses_seed else None)
            torch.testing.assert_close(target[name], expected, atol=ATOL, rtol=0, msg=f"{method} {name}")


def test_ties_with_rescale_in_memory_equals_methods():
    models = _models(n=2, seed=31)
    target = {k: torch.empty(s) for k, s in SHAPES.items()}
    mat = _materializer("ties", models, target, compile=False)
    p = TensorParams({"m0": {"weight": 0.7, "density": 0.3}, "m1": {"weight": 0.5, "density": 0.6}},
                     {"normalize": True, "rescale": True})
    mat.materialize({k: p for k in SHAPES})
    for k in SHAPES:
        torch.testing.assert_close(target[k], _expected("ties", models, ["m0", "m1"], k, p, 0), atol=ATOL, rtol=0)
    without = _expected("ties", models, ["m0", "m1"], "emb", TensorParams(p.per_model, {"normalize": True}), 0)
    assert not torch.allclose(without, target["emb"], atol=1e-3)  # rescale changes the merge
