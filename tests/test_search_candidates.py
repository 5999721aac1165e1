"""In-memory candidates used by fitness functions equal what `evomm merge` / the DFS model give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomm.search.candidates import CandidateModel, PSCandidates
from evomm.search.ps_space import PSSpace


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from testkit.tiny import save, tiny_llava, tiny_mistral

    root = tmp_path_factory.mktemp("candidates")
    return {
        "base": str(save(tiny_mistral(base_seed=0), root / "base")),
        "ja": str(save(tiny_mistral(seed=6, scale=0.02), root / "ja")),
        "vlm": str(save(tiny_llava(seed=5, scale=0.02), root / "vlm")),
    }


def test_llava_x_llm_candidate_in_memory_equals_evomm_merge_output(zoo, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from evomm.merge.execute import run_merge
    from evomm.merge.recipe import Recipe

    space = PSSpace("ties", [zoo["vlm"], zoo["ja"]], num_layers=4, base_model=zoo["base"], filters=["mlp"])
    rng = np.random.default_rng(0)
    specs = [space.decode(rng.uniform(space.lower, space.upper)) for _ in range(2)]
    candidate = CandidateModel(specs[0])
    ids = torch.randint(3, 120, (1, 12), generator=torch.Generator().manual_seed(0))
    for i, spec in enumerate(specs):  # the second candidate overwrites the first in place
        model = candidate.apply(spec)
        assert isinstance(model, LlavaForConditionalGeneration)
        merged = run_merge(Recipe.from_dict(spec), tmp_path / f"merged{i}", progress=False)
        reference = LlavaForConditionalGeneration.from_pretrained(merged).eval()
        with torch.no_grad():
            got, want = model(input_ids=ids).logits, reference(input_ids=ids).logits
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_ps_candidates_write_in_place_without_reallocating(zoo):
    space = PSSpace("linear", [zoo["base"], zoo["ja"]], num_layers=4)
    candidates = PSCandidates(space.decode(space.initial()))
    name = candidates.merged_names[0]
    buffer = candidates.target[name]
    candidates.apply(space.decode(space.encode({"weight": 1.0})))
    first = buffer.clone()
    x = space.initial()
    x[space.dim // 2:] = 0.0  # weight 0 for the second model: the result is the first model
    candidates.apply(space.decode(x))
    assert candidates.target[name] is buffer
    assert not torch.equal(first, buffer)
    from evomm.io.sources import open_source

    assert torch.allclose(buffer, open_source(zoo["base"]).get(name).float())


def test_dfs_identity_path_reproduces_a_source(zoo):
    from evomm.search.dfs_space import build_space
    from evomm.search.export import load_decoder_source

    space = build_space([zoo["ja"], zoo["base"]], repeats=2)
    candidate = CandidateModel(space.decode(space.initial()))
    ids = torch.randint(3, 120, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = candidate.apply(space.decode(space.initial()))(input_ids=ids).logits
        want = load_decoder_source(zoo["ja"])(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-6)


def test_dfs_over_a_llava_and_an_llm_stays_a_llava(zoo):
    from transformers import LlavaForConditionalGeneration

    from evomm.search.dfs_space import build_space
    from evomm.search.export import load_decoder_source

    space = build_space([zoo["vlm"], zoo["ja"]], repeats=1)
    candidate = CandidateModel(space.decode(space.initial()))
    ids = torch.randint(3, 120, (1, 8), generator=torch.Generator().manual_seed(2))
    model = candidate.apply(space.decode(space.initial()))  # the VLM's own layers, scale 1
    assert isinstance(model, LlavaForConditionalGeneration)
    with torch.no_grad():
        got = model(input_ids=ids).logits
        want = load_decoder_source(zoo["vlm"])(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-6)
    # re-routing through the Japanese LM's layers changes the answer in place
    path = [[0, 0], [0, 1], [1, 2], [1, 3]]
    with torch.no_grad():
        rerouted = candidate.apply(space.decode(space.encode(path)))(input_ids=ids).logits
    assert not torch.allclose(rerouted, want, atol=1e-4)
