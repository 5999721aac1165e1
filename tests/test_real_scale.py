"""The real EvoVLM-JP recipe's sources, as miniatures with every quirk (tests/miniatures.py).

Each test here failed before its fix (issue 12): the llava-hf vision tower names, a
text_config without num_hidden_layers, LLaVA-1.6 (rope 1e6, no window) × shisa (rope 1e4,
window 4096) in one DFS path, DFS candidates on another device, DFS export dtype.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from evomm.io import open_source
from evomm.search.candidates import CandidateModel, model_targets
from evomm.search.dfs_space import build_space
from evomm.search.export import load_decoder_source, save_dfs_model
from miniatures import LAYERS, VOCAB_LLAVA, evovlm_sources


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return evovlm_sources(tmp_path_factory.mktemp("evovlm_miniatures"))


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 30000, (2, 9), generator=torch.Generator().manual_seed(0))


def _crossing_spec(real, **extra):
    # LLaVA's first layers, then shisa's, then LLaVA's again: both rotary settings on one path
    path = [[0, 0], [0, 1], [1, 2], [1, 3], [1, 3], [0, 30], [1, 31]]
    return {"type": "dfs", "sources": [str(real["llava"]), str(real["shisa"])], "path": path,
            "scales": [1.0, 1.0, 0.9, 1.0, 1.1, 1.0, 1.0], "embed_source": 0, "head_source": 0, **extra}


def test_llava_hf_checkpoint_names_map_onto_the_model_in_memory(real):
    source = open_source(real["llava"])
    names = source.keys()
    assert any(n.startswith("vision_tower.vision_model.") for n in names)  # the real on-disk level
    model = load_decoder_source(real["llava"], dtype="auto")
    targets = model_targets(model, names)
    assert set(targets) == set(names)
    name = "vision_tower.vision_model.embeddings.class_embedding"
    assert torch.equal(targets[name], source.get(name))
    source.close()


def test_ps_candidate_over_the_real_layout(real, ids):
    recipe = {"merge_method": "task_arithmetic", "base_model": str(real["mistral_base"]), "dtype": "bfloat16",
              "models": [{"model": str(real["llava"]), "parameters": {"weight": 1.0}},
                         {"model": str(real["shisa"]), "parameters": {"weight": 0.0}}],
              "evomm": {"keep_from": str(real["llava"])}}
    candidate = CandidateModel(recipe, dtype=torch.bfloat16)
    model = candidate.apply(recipe)
    reference = load_decoder_source(real["llava"], dtype=torch.bfloat16)
    # weight 1 on LLaVA and 0 on shisa is LLaVA itself (to bf16 rounding of the arithmetic)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name].float(), value.float(), atol=2e-2, rtol=0)


def test_dfs_space_counts_layers_without_num_hidden_layers(real):
    config = json.loads((real["llava"] / "config.json").read_text())
    assert "num_hidden_layers" not in config["text_config"]
    space = build_space([str(real["llava"]), str(real["shisa"])], repeats=3, max_length=64, scaling="layer_pair")
    assert space.num_layers == [LAYERS, LAYERS]


def test_dfs_path_keeps_each_layers_own_rotary_embedding_and_window(real, ids):
    from evomm.models.dfs import DFSForCausalLM

    llava = load_decoder_source(real["llava"])
    shisa = load_decoder_source(real["shisa"])
    spec = _crossing_spec(real)
    dfs = DFSForCausalLM.from_sources([llava, shisa], spec["path"], spec["scales"])
    seen = {}

    def grab(position):
        def hook(module, args, kwargs):
            seen[position] = kwargs["position_embeddings"][0]
        return hook

    handles = [layer.register_forward_pre_hook(grab(p), with_kwargs=True) for p, layer in enumerate(dfs.model.layers)]
    with torch.no_grad():
        dfs(ids)
    for handle in handles:
        handle.remove()
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    x = torch.zeros(1, ids.shape[1], 32)
    cos_llava = llava.model.language_model.rotary_emb(x, position_ids=positions)[0]
    cos_shisa = shisa.model.rotary_emb(x, position_ids=positions)[0]
    assert not torch.allclose(cos_llava, cos_shisa)  # 1e6 vs 1e4: the check can tell them apart
    for position, (src, _) in enumerate(spec["path"]):
        torch.testing.assert_close(seen[position], cos_shisa if src == 1 else cos_llava)
    # shisa's layers keep its 4096 window, LLaVA's attend to everything
    assert dfs.config.layer_types == ["sliding_attention" if s == 1 else "full_attention" for s, _ in spec["path"]]
    assert dfs.config.sliding_window == 4096
    with torch.no_grad():
        cached = dfs.generate(ids, max_new_tokens=4, do_sample=False)
        uncached = dfs.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_dfs_checkpoint_reloads_with_per_source_rotary(real, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    from evomm.models.dfs import DFSForCausalLM, save_dfs

    llava = load_decoder_source(real["llava"])
    shisa = load_decoder_source(real["shisa"])
    spec = _crossing_spec(real)
    dfs = DFSForCausalLM.from_sources([llava, shisa], spec["path"], spec["scales"])
    loaded = AutoModelForCausalLM.from_pretrained(save_dfs(dfs, tmp_path / "dfs"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, dfs(ids).logits, atol=1e-5, rtol=0)


def test_dfs_candidate_moves_every_source_layer_to_its_device(real):
    candidate = CandidateModel(_crossing_spec(real), device="meta")
    layers = [layer for source in candidate._dfs.model._source_layers for layer in source]
    assert len(layers) == 2 * LAYERS
    assert all(p.device.type == "meta" for layer in layers for p in layer.parameters())
    # a later path through other layers runs on the same device
    other = _crossing_spec(real, path=[[1, 10], [0, 20], [1, 29]], scales=[1.0, 1.0, 1.0])
    model = candidate.apply(other)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_dfs_export_keeps_the_sources_storage_dtype(real, tmp_path):
    out = save_dfs_model(_crossing_spec(real), tmp_path / "dfs_model")
    dtypes = set()
    for file in out.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == VOCAB_LLAVA


def _dare_ties(real):
    return {"merge_method": "dare_ties", "base_model": str(real["mistral_base"]), "dtype": "bfloat16",
            "models": [{"model": str(real["llava"]), "parameters": {"weight": 0.6, "density": 0.5}},
                       {"model": str(real["shisa"]), "parameters": {"weight": 0.5, "density": 0.4}}],
            "evomm": {"keep_from": str(real["llava"]), "seed": 0}}


@pytest.mark.parametrize("merge_device", [None, "cpu"])
def test_ps_candidate_merges_where_asked_in_the_model_dtype(real, merge_device):
    # "meta" stands in for a GPU: by default the merge state lives with the model on the
    # evaluator's device (nothing per candidate crosses the bus); merge_device="cpu" keeps it
    # in host RAM. Either way it is kept in the model's dtype, DARE bits as int16.
    recipe = _dare_ties(real)
    candidate = CandidateModel(recipe, device="meta", dtype=torch.bfloat16, merge_device=merge_device)
    slots = candidate._ps.materializer._slots.values()
    assert slots
    state_device = "cpu" if merge_device == "cpu" else "meta"
    assert {t.device.type for s in slots for t in (s.base, *s.inputs)} == {state_device}
    assert {t.dtype for s in slots for t in (s.base, *s.inputs)} == {torch.bfloat16}
    model = candidate.apply(recipe)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.dtype for s in slots for b in s.bits} == {torch.int16}
