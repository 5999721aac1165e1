"""DFS merging: the layer-path model (evomm.models.dfs) and its genome (evomm.search.dfs_space)."""

import copy
import json
import warnings

import numpy as np
import pytest
import torch

from evomm.errors import DFSError
from evomm.models.dfs import DFSForCausalLM, DFSModel, apply_spec, dfs_into_llava, save_dfs, scales_from_w
from evomm.search.dfs_space import DFSSpace, build_space
from evomm.search.space import SearchSpace
from testkit.tiny import tiny_llava, tiny_mistral

# a path deeper than either source, with repeated layers from both and non-trivial scales
DEEP_PATH = [[0, 0], [0, 1], [1, 1], [1, 2], [0, 2], [1, 2], [0, 3], [1, 3], [0, 0], [0, 3]]
DEEP_SCALES = [1.0, 1.0, 0.8, 1.0, 1.25, 1.0, 0.9, 1.0, 1.1, 1.0]


@pytest.fixture(scope="module")
def sources():
    return tiny_mistral(seed=1, scale=0.05), tiny_mistral(seed=2, scale=0.05)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(0))


def logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, **kwargs).logits


# -- the model ------------------------------------------------------------------------------


@pytest.mark.parametrize("src", [0, 1])
def test_identity_path_reproduces_source(sources, ids, src):
    dfs = DFSForCausalLM.from_sources(sources, [[src, l] for l in range(4)], embed_source=src)
    assert torch.allclose(logits(dfs, ids), logits(sources[src], ids), atol=1e-5, rtol=0)
    # and not the other source's logits: the path decides
    assert not torch.allclose(logits(dfs, ids), logits(sources[1 - src], ids), atol=1e-3)


def test_layers_are_shared_not_copied(sources):
    dfs = DFSForCausalLM.from_sources(sources, DEEP_PATH)
    assert dfs.model.layers[2] is sources[1].model.layers[1]
    assert dfs.model.layers[3] is dfs.model.layers[5]  # layer (1, 2) used twice: one module
    assert dfs.model.layers[0] is dfs.model.layers[8]  # layer (0, 0) used twice
    assert dfs.lm_head is sources[0].lm_head
    n_src = sum(p.numel() for m in sources for p in m.parameters())
    assert sum(p.numel() for p in dfs.parameters()) < n_src  # no new weights


def test_scale_multiplies_hidden_state_entering_position(sources, ids):
    a = sources[0]
    dfs = DFSForCausalLM.from_sources(sources, [[0, l] for l in range(4)], [1.0, 1.0, 1.7, 1.0])
    # reference: the source model with its layer-2 input scaled by a hook
    handle = a.model.layers[2].register_forward_pre_hook(lambda mod, args: (args[0] * 1.7, *args[1:]))
    try:
        expected = logits(a, ids)
    finally:
        handle.remove()
    got = logits(dfs, ids)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got, logits(a, ids), atol=1e-3)


def test_scales_from_w_matrix():
    w = torch.arange(64, dtype=torch.float64).reshape(8, 8) / 64 + 0.5  # M = 8 layers of 2 sources
    path = [[0, 0], [0, 1], [1, 1], [0, 3]]
    hops = [(0, 1), (1, 5), (5, 3)]  # global indices: source 1's layer l is 4 + l
    assert scales_from_w(path, w, [4, 4]) == pytest.approx([1.0] + [w[i, j].item() for i, j in hops])
    per_source = [[1.0, 0.5], [2.0, 1.0]]
    assert scales_from_w(path, per_source, [4, 4]) == pytest.approx([1.0, 1.0, 0.5, 2.0])
    with pytest.raises(DFSError, match="W must be"):
        scales_from_w(path, torch.ones(3, 3), [4, 4])


def test_deep_path_generates_same_with_and_without_cache(sources, ids):
    dfs = DFSForCausalLM.from_sources(sources, DEEP_PATH, DEEP_SCALES)
    with torch.no_grad():
        cached = dfs.generate(ids, max_new_tokens=10, do_sample=False)
        uncached = dfs.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False)
    assert cached.shape == (2, 17)
    assert torch.equal(cached, uncached)


def _cache_of(output):
    """The cache of a model output, under the name this transformers release gives it."""
    from evomm.models.hf_cache import output_cache_field

    return getattr(output, output_cache_field(type(output)))


def test_generate_writes_one_cache_slot_per_path_position(sources, ids):
    # a bypassed per-position cache (repeated layers writing into one slot, or a cache the
    # layers make for themselves) shows as the wrong number of slots or the wrong lengths
    dfs = DFSForCausalLM.from_sources(sources, DEEP_PATH, DEEP_SCALES)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated cache keyword on the way
        with torch.no_grad():
            out = dfs.generate(ids, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    cache = _cache_of(out)
    assert len(cache.layers) == len(DEEP_PATH)
    assert [layer.get_seq_length() for layer in cache.layers] == [ids.shape[1] + 4] * len(DEEP_PATH)
    # repeated source layers (positions 3 and 5 run layer (1, 2)) hold different keys
    assert not torch.equal(cache.layers[3].keys, cache.layers[5].keys)


class _LayerIgnoringItsCache(torch.nn.Module):
    """A decoder layer that takes a cache argument but never writes to it."""

    def __init__(self, layer):
        super().__init__()
        self.inner = layer

    def forward(self, hidden_states, cache=None, **kwargs):
        return self.inner(hidden_states, **kwargs)


def test_layer_that_bypasses_its_cache_slot_fails_loudly(sources, ids):
    dfs = DFSForCausalLM.from_sources(sources, DEEP_PATH, DEEP_SCALES)
    dfs.model.layers[4] = _LayerIgnoringItsCache(dfs.model.layers[4])
    with torch.no_grad(), pytest.raises(DFSError, match="position 4 .* did not write to its own cache slot"):
        dfs(ids, use_cache=True)
    with torch.no_grad():  # without a cache there is nothing to bypass
        dfs(ids, use_cache=False)


def test_cache_has_one_slot_per_path_position(sources, ids):
    dfs = DFSForCausalLM.from_sources(sources, DEEP_PATH, DEEP_SCALES)
    full = logits(dfs, ids)
    with torch.no_grad():
        out = dfs(ids[:, :4], use_cache=True)
        cache = _cache_of(out)
        steps = [out.logits]
        for t in range(4, ids.shape[1]):
            out = dfs(ids[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    assert len(cache.layers) == len(DEEP_PATH)
    assert all(layer.get_seq_length() == ids.shape[1] for layer in cache.layers)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_set_path_in_place_matches_fresh_build(sources, ids):
    dfs = DFSForCausalLM.from_sources(sources, [[0, l] for l in range(4)])
    before = logits(dfs, ids)
    dfs.set_path(DEEP_PATH, DEEP_SCALES)
    fresh = DFSForCausalLM.from_sources(sources, DEEP_PATH, DEEP_SCALES)
    assert dfs.config.num_hidden_layers == len(DEEP_PATH) and dfs.path == DEEP_PATH
    assert torch.equal(logits(dfs, ids), logits(fresh, ids))
    apply_spec(dfs, {"type": "dfs", "path": [[0, l] for l in range(4)], "scales": [1.0] * 4})
    assert torch.equal(logits(dfs, ids), before)


def test_save_load_round_trip(sources, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    dfs = DFSForCausalLM.from_sources(sources, DEEP_PATH, DEEP_SCALES, source_names=["a", "b"])
    out = save_dfs(dfs, tmp_path / "dfs")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "evomm_dfs"
    assert config["num_hidden_layers"] == len(DEEP_PATH)
    assert config["dfs_path"] == DEEP_PATH
    assert config["dfs_input_scales"] == pytest.approx(DEEP_SCALES)
    assert config["dfs_sources"] == ["a", "b"]
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(loaded, DFSForCausalLM)
    # a plain decoder: one own layer per position, its own cache index
    assert [layer.self_attn.layer_idx for layer in loaded.model.layers] == list(range(len(DEEP_PATH)))
    assert loaded.model.layers[0] is not loaded.model.layers[8]
    assert torch.equal(logits(loaded, ids), logits(dfs, ids))
    with torch.no_grad():
        assert torch.equal(loaded.generate(ids, max_new_tokens=5, do_sample=False),
                           dfs.generate(ids, max_new_tokens=5, do_sample=False))
    with pytest.raises(DFSError):
        loaded.set_path([[0, 0]])


def test_checkpoint_with_unit_scales_reads_as_base_architecture(sources, ids, tmp_path):
    from transformers import MistralForCausalLM

    dfs = DFSForCausalLM.from_sources(sources, DEEP_PATH)
    out = save_dfs(dfs, tmp_path / "dfs")
    plain = MistralForCausalLM.from_pretrained(out)
    assert plain.config.num_hidden_layers == len(DEEP_PATH)
    assert torch.allclose(logits(plain, ids), logits(dfs, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_other_decoder_families(family, ids, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if family == "llama":
        make = lambda: LlamaForCausalLM(LlamaConfig(**shape)).eval()  # noqa: E731
    else:  # sliding attention in layers 2 and 3: the DFS layer types must follow the path
        make = lambda: Qwen2ForCausalLM(Qwen2Config(**shape, use_sliding_window=True, sliding_window=3,  # noqa: E731
                                                    max_window_layers=2)).eval()
    torch.manual_seed(0)
    a = make()
    torch.manual_seed(1)
    b = make()
    dfs = DFSForCausalLM.from_sources([a, b], [[0, l] for l in range(4)])
    assert torch.allclose(logits(dfs, ids), logits(a, ids), atol=1e-5, rtol=0)
    path = [[0, 0], [1, 1], [0, 1], [1, 2], [1, 2], [0, 3], [1, 3]]
    dfs.set_path(path, [1.0, 0.9, 1.0, 1.0, 1.1, 1.0, 1.0])
    if family == "qwen2":
        assert dfs.config.layer_types == ["full_attention"] * 3 + ["sliding_attention"] * 4
    with torch.no_grad():
        assert torch.equal(dfs.generate(ids, max_new_tokens=6, do_sample=False),
                           dfs.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False))
    loaded = AutoModelForCausalLM.from_pretrained(save_dfs(dfs, tmp_path / "dfs"))
    assert torch.equal(logits(loaded, ids), logits(dfs, ids))


def test_bad_inputs_raise_dfs_errors(sources):
    with pytest.raises(DFSError, match="no layer 4"):
        DFSForCausalLM.from_sources(sources, [[0, 4]])
    with pytest.raises(DFSError, match="source 2"):
        DFSForCausalLM.from_sources(sources, [[2, 0]])
    with pytest.raises(DFSError, match="at least one layer"):
        DFSForCausalLM.from_sources(sources, [])
    with pytest.raises(DFSError, match="scales"):
        DFSForCausalLM.from_sources(sources, [[0, 0], [0, 1]], [1.0])
    wide = tiny_mistral(hidden=64)
    with pytest.raises(DFSError, match="hidden_size"):
        DFSForCausalLM.from_sources([sources[0], wide], [[0, 0]])
    with pytest.raises(DFSError, match="type: dfs"):
        apply_spec(DFSForCausalLM.from_sources(sources, [[0, 0]]), {"type": "ps"})


# -- inside a VLM ---------------------------------------------------------------------------


def _llava_inputs(llava):
    n_image_tokens = (32 // 8) ** 2
    text = torch.randint(3, 120, (1, 6), generator=torch.Generator().manual_seed(1))
    image = torch.full((1, n_image_tokens), llava.config.image_token_index)
    input_ids = torch.cat([text[:, :2], image, text[:, 2:]], dim=1)
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return {"input_ids": input_ids, "pixel_values": pixel_values}


def test_dfs_backbone_inside_llava_generates(tmp_path):
    from transformers import LlavaForConditionalGeneration

    llava = tiny_llava(seed=3, scale=0.02)
    ja = tiny_mistral(seed=4, scale=0.05)  # shares the decoder base with the LLaVA
    inputs = _llava_inputs(llava)
    with torch.no_grad():
        original = llava(**inputs).logits
    # embeddings and head from the LLaVA (its vocabulary has the image token)
    dfs = DFSForCausalLM.from_sources([llava, ja], [[0, l] for l in range(4)], source_names=["vlm", "ja"])
    assert dfs_into_llava(llava, dfs) is llava
    assert isinstance(llava.model.language_model, DFSModel)
    with torch.no_grad():
        assert torch.allclose(llava(**inputs).logits, original, atol=1e-5, rtol=0)

    dfs.set_path(DEEP_PATH, DEEP_SCALES)  # re-routes the LLaVA too
    with torch.no_grad():
        changed = llava(**inputs).logits
        cached = llava.generate(**inputs, max_new_tokens=6, do_sample=False)
        uncached = llava.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert not torch.allclose(changed, original, atol=1e-3)
    assert cached.shape[1] == inputs["input_ids"].shape[1] + 6
    assert torch.equal(cached, uncached)

    llava.save_pretrained(tmp_path / "vlm")
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "vlm")
    assert isinstance(reloaded.model.language_model, DFSModel)
    assert reloaded.config.text_config.num_hidden_layers == len(DEEP_PATH)
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, changed)


def test_dfs_into_llava_rejects_other_vocabulary():
    llava = tiny_llava(seed=3, scale=0.02)
    ja = tiny_mistral(seed=4, scale=0.05)
    dfs = DFSForCausalLM.from_sources([ja, llava], [[0, 0], [1, 1]])  # embeddings of the text LLM
    with pytest.raises(DFSError, match="vocabulary"):
        dfs_into_llava(llava, dfs)


# -- the genome -----------------------------------------------------------------------------


def test_space_follows_protocol_and_bounds():
    space = DFSSpace([4, 4], ["a", "b"], repeats=2, max_length=6)
    assert isinstance(space, SearchSpace)
    assert space.num_slots == 16
    assert space.dim == 16 + 8 * 8  # r >= 2: every layer pair can follow another
    # a source's own wiring (l -> l + 1: 3 steps in each 4-layer source) may be left unscaled
    assert DFSSpace([4, 4], repeats=2, scale_own_order=False).dim == 16 + 8 * 8 - 2 * 3
    assert len(space.labels()) == space.dim and len(set(space.labels())) == space.dim
    x0 = space.initial()
    assert x0.shape == (space.dim,)
    assert np.all(space.lower <= x0) and np.all(x0 <= space.upper)
    assert np.all(space.lower[:16] == -1) and np.all(space.upper[16:] == 1.0)
    assert DFSSpace([4, 4], repeats=1).dim == 8 + 8 * 7 // 2  # r = 1: only forward pairs
    assert DFSSpace([4, 4], scaling="source_pair").dim == 16 + 4
    assert DFSSpace([4, 4], scaling="none").dim == 16


@pytest.mark.parametrize("init_source", [0, 1])
def test_initial_point_decodes_to_identity_path(init_source):
    space = DFSSpace([4, 3], ["a", "b"], repeats=3, init_source=init_source)
    spec = space.decode(space.initial())
    assert spec["type"] == "dfs"
    assert spec["path"] == [[init_source, l] for l in range(space.num_layers[init_source])]
    assert spec["scales"] == [1.0] * len(spec["path"])
    assert spec["sources"] == ["a", "b"]


@pytest.mark.parametrize("scaling", ["source_pair", "layer_pair"])
def test_a_sources_own_wiring_can_be_left_unscaled(scaling):
    """Perturbing W must not touch stretches of the path that copy a source (the initial path
    above all): only hand-overs between sources, skips and repeats carry a scale."""
    space = DFSSpace([4, 4], ["a", "b"], repeats=2, scaling=scaling, max_length=16, scale_own_order=False)
    x = space.encode([[0, 0], [0, 1], [1, 1], [1, 2], [0, 0], [0, 3]])
    x[space.num_slots:] = 0.7  # every W entry at 2^0.7
    spec = space.decode(x)
    assert spec["scales"] == pytest.approx([1.0, 1.0, 2 ** 0.7, 1.0, 2 ** 0.7, 2 ** 0.7])
    assert space.decode(space.initial() + np.r_[np.zeros(space.num_slots), np.full(space.dim - space.num_slots, 0.9)])[
        "scales"] == [1.0] * 4
    old = DFSSpace([4, 4], ["a", "b"], repeats=2, scaling=scaling, max_length=16)  # the default: W everywhere
    y = old.encode([[0, 0], [0, 1]])
    y[old.num_slots:] = 0.7
    assert old.decode(y)["scales"] == pytest.approx([1.0, 2 ** 0.7])


def test_decode_is_deterministic_and_json_able():
    space = DFSSpace([4, 4], repeats=2, max_length=8)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.uniform(space.lower, space.upper)
        spec = space.decode(x)
        assert spec == space.decode(x.copy())
        assert json.loads(json.dumps(spec)) == spec


def test_max_length_keeps_the_largest_slots_in_order():
    space = DFSSpace([4, 4], repeats=2, max_length=5, scaling="none")
    rng = np.random.default_rng(1)
    for _ in range(50):
        x = rng.uniform(space.lower, space.upper)
        spec = space.decode(x)
        on = np.flatnonzero(x > 0)
        assert len(spec["path"]) == min(max(len(on), 1), 5)
        assert spec["slots"] == sorted(spec["slots"])
        if len(on) > 5:
            kept = set(spec["slots"])
            assert min(x[list(kept)]) >= max(x[[t for t in on if t not in kept]])
    x = np.full(space.dim, -0.5)
    x[3] = -0.1  # nothing > 0: min_length 1 takes the largest slot
    assert space.decode(x)["slots"] == [3]


def test_scales_come_from_w_and_stay_in_bounds():
    space = DFSSpace([2, 2], repeats=2, scale_range=1.0)
    rng = np.random.default_rng(2)
    for _ in range(30):
        spec = space.decode(rng.uniform(space.lower - 1, space.upper + 1))  # clipped into bounds
        assert spec["scales"][0] == 1.0
        assert all(0.5 <= s <= 2.0 for s in spec["scales"])
    path = [[0, 0], [1, 0], [1, 1], [0, 1], [1, 0]]
    scales = [1.0, 0.7, 1.0, 1.5, 1.2]
    spec = space.decode(space.encode(path, scales))
    assert spec["path"] == path and spec["scales"] == pytest.approx(scales)


def test_source_pair_scaling_shares_one_scale_per_crossing():
    space = DFSSpace([2, 2], repeats=2, scaling="source_pair")
    x = space.initial()
    x[:8] = [1, -1, 1, 1, 1, 1, -1, -1]  # a0, b0, b1, a0, a1
    labels = space.labels()
    x[labels.index("W source0->source1")] = 0.5
    x[labels.index("W source1->source0")] = -1.0
    spec = space.decode(x)
    assert spec["path"] == [[0, 0], [1, 0], [1, 1], [0, 0], [0, 1]]
    assert spec["scales"] == pytest.approx([1.0, 2**0.5, 1.0, 0.5, 1.0])


def test_space_reads_layer_counts_from_checkpoints(tmp_path):
    from testkit.tiny import save

    llm = save(tiny_mistral(num_layers=3), tmp_path / "llm")
    vlm = save(tiny_llava(num_layers=4), tmp_path / "vlm")  # layers counted in its text_config
    space = build_space([str(vlm), llm], repeats=2, max_length=10, scaling="source_pair")
    assert space.num_layers == [4, 3]
    assert space.sources == [str(vlm), str(llm)]
    assert space.decode(space.initial())["path"] == [[0, l] for l in range(4)]
    from evomm.errors import ConfigError

    with pytest.raises(ConfigError, match="config.json"):
        build_space([tmp_path / "missing"])


def test_bad_space_options_raise():
    from evomm.errors import ConfigError

    with pytest.raises(ConfigError):
        DFSSpace([4, 4], max_length=40)  # more than the 16 slots
    with pytest.raises(ConfigError):
        DFSSpace([4, 4], max_length=3)  # the identity path (4 layers) would not fit
    with pytest.raises(ConfigError):
        DFSSpace([4, 4], scaling="matrix")
    with pytest.raises(ConfigError, match="dfs space"):
        build_space(["x", "y"], num_layers=[4, 4], unknown_option=1)
    with pytest.raises(DFSError):
        DFSSpace([4, 4], repeats=1).encode([[0, 3], [0, 2]])  # needs a second repeat


# -- genome -> model ------------------------------------------------------------------------


def test_random_genomes_run_on_one_preallocated_model(sources, ids):
    # PS+DFS: one source is a merged model in memory (here a plain average of the two)
    merged = copy.deepcopy(sources[0])
    with torch.no_grad():
        for p_m, p_b in zip(merged.parameters(), sources[1].parameters()):
            p_m.lerp_(p_b, 0.5)
    models = [merged, sources[1]]
    space = build_space(models, repeats=2, max_length=8)
    assert space.num_layers == [4, 4]
    model = DFSForCausalLM.from_spec(models, space.decode(space.initial()))
    assert torch.allclose(logits(model, ids), logits(merged, ids), atol=1e-5, rtol=0)
    rng = np.random.default_rng(3)
    for _ in range(3):
        spec = space.decode(rng.uniform(space.lower, space.upper))
        model.apply_spec(spec)
        assert model.config.num_hidden_layers == len(spec["path"]) <= 8
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=4, do_sample=False)
        assert out.shape == (2, ids.shape[1] + 4)


def test_unit_scale_dfs_exports_as_a_plain_decoder_with_a_slices_recipe(tmp_path, ids):
    # every scale 1 and sources with the same layer settings: the DFS model *is* a Mistral with
    # the path's layers stacked; it saves as one (any runtime serves it) with mergekit's
    # `slices:` recipe beside it, which `evomm merge` and mergekit-yaml turn into the same model
    import yaml
    from safetensors.torch import load_file
    from transformers import MistralForCausalLM

    from evomm.merge.execute import run_merge
    from evomm.merge.recipe import Recipe
    from evomm.search.export import save_dfs_model
    from testkit.tiny import save

    paths = [str(save(m, tmp_path / name)) for m, name in ((tiny_mistral(seed=1, scale=0.05), "a"),
                                                             (tiny_mistral(seed=2, scale=0.05), "b"))]
    spec = {"type": "dfs", "sources": paths, "path": [[0, 0], [0, 1], [1, 1], [1, 2], [1, 3], [0, 2], [0, 3]],
            "scales": [1.0] * 7, "embed_source": 0, "head_source": 0}
    out = save_dfs_model(spec, tmp_path / "dfs")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mistral" and config["num_hidden_layers"] == 7
    assert config["architectures"] == ["MistralForCausalLM"] and "dfs_path" not in config
    plain = MistralForCausalLM.from_pretrained(out).eval()
    sources = [MistralForCausalLM.from_pretrained(p).eval() for p in paths]
    dfs = DFSForCausalLM.from_sources(sources, spec["path"], spec["scales"])
    assert torch.allclose(logits(plain, ids), logits(dfs, ids), atol=1e-5, rtol=0)
    recipe = yaml.safe_load((out / "slices.yml").read_text())
    assert [s["sources"][0]["layer_range"] for s in recipe["slices"]] == [[0, 2], [1, 4], [2, 4]]
    run_merge(Recipe.from_dict(recipe), tmp_path / "rebuilt", progress=False)
    exported, rebuilt = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "rebuilt" / "model.safetensors"))
    assert set(rebuilt) == set(exported) and all(torch.equal(rebuilt[k], exported[k]) for k in exported)
    # a path with scales other than 1 stays a DFS checkpoint (evomm_dfs), without the recipe
    scaled = save_dfs_model({**spec, "scales": [1.0, 1.2] + [1.0] * 5}, tmp_path / "scaled")
    assert json.loads((scaled / "config.json").read_text())["model_type"] == "evomm_dfs"
    assert not (scaled / "slices.yml").exists()
