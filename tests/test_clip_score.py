"""CLIPScore plumbing on a tiny open_clip model registered from a custom config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from evomm.errors import MetricError, PickleRefusedError
from evomm.metrics.clip_score import ClipScorer, clip_score

MODEL = "evomm-test-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module", autouse=True)
def tiny_config(tmp_path_factory):
    import open_clip

    path = tmp_path_factory.mktemp("clip") / f"{MODEL}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    solid = [Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("L", (32, 32), 200)]
    return noise + solid


PROMPTS = ["a red square", "a dog on a bench", "赤い四角", "blue sky", "a grey picture"]


def direct_scores(scorer: ClipScorer, imgs, texts) -> np.ndarray:
    with torch.no_grad():
        x = torch.stack([scorer.preprocess(im.convert("RGB")) for im in imgs])
        i = torch.nn.functional.normalize(scorer.model.encode_image(x), dim=-1)
        t = torch.nn.functional.normalize(scorer.model.encode_text(scorer.tokenizer(texts)), dim=-1)
    cos = (i * t).sum(-1).numpy()
    return cos


def seeded_scorer(seed: int, **kwargs) -> ClipScorer:
    torch.manual_seed(seed)
    return ClipScorer(MODEL, **kwargs)


def test_score_is_100_times_clamped_cosine():
    scorer = seeded_scorer(0, batch_size=2)
    cos = direct_scores(scorer, images(), PROMPTS)
    scores = scorer.score(images(), PROMPTS)
    np.testing.assert_allclose(scores, 100 * np.maximum(cos, 0), rtol=1e-5, atol=1e-4)
    assert (cos > 0).all() and (scores > 0).all()
    assert scorer(images(), PROMPTS) == pytest.approx(scores.mean())
    # flip the text projection: every cosine changes sign and is clamped to 0
    with torch.no_grad():
        scorer.model.text_projection.neg_()
    scorer.clear_cache()
    np.testing.assert_allclose(direct_scores(scorer, images(), PROMPTS), -cos, rtol=1e-5, atol=1e-6)
    assert (scorer.score(images(), PROMPTS) == 0).all()


def test_batching_does_not_change_scores():
    one = seeded_scorer(0, batch_size=1).score(images(), PROMPTS)
    many = seeded_scorer(0, batch_size=4).score(images(), PROMPTS)
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-4)


def test_weights_from_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    source = seeded_scorer(3)
    path = tmp_path / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = seeded_scorer(99, pretrained=path)  # random init overwritten by the file
    np.testing.assert_allclose(loaded.score(images(), PROMPTS), source.score(images(), PROMPTS),
                               rtol=1e-5, atol=1e-4)
    other = seeded_scorer(99)
    assert not np.allclose(other.score(images(), PROMPTS), source.score(images(), PROMPTS))
    assert clip_score(images(), PROMPTS, MODEL, pretrained=path) == pytest.approx(
        float(source.score(images(), PROMPTS).mean()), rel=1e-5)


def test_pickled_weights_refused(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(PickleRefusedError, match="allow_pickle"):
        ClipScorer(MODEL, pretrained=tmp_path / "w.bin")


def test_english_glosses_replace_japanese_prompts():
    scorer = seeded_scorer(0)
    ja = ["赤い四角", "ベンチの上の犬", "赤い四角", "青空", "灰色の絵"]
    glossed = scorer.score(images(), ja, glosses=PROMPTS)
    np.testing.assert_allclose(glossed, scorer.score(images(), PROMPTS), rtol=1e-6)
    assert not np.allclose(scorer.score(images(), ja), glossed)


def test_tensor_images_match_pil_images():
    """At the model's input size no resize happens, so both paths see the same pixels."""
    scorer = seeded_scorer(0, batch_size=2)
    pil = [im.convert("RGB").resize((32, 32)) for im in images()]
    tensors = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in pil]) / 255
    np.testing.assert_allclose(scorer.score_tensors(tensors, PROMPTS), scorer.score(pil, PROMPTS),
                               rtol=1e-4, atol=1e-3)
    # a larger tensor is resized to the input size first
    big = torch.nn.functional.interpolate(tensors, size=(64, 64), mode="nearest")
    assert scorer.score_tensors(big, PROMPTS).shape == (5,)
    with pytest.raises(MetricError, match=r"shape \(N, 3, H, W\)"):
        scorer.score_tensors(tensors[:, :1], PROMPTS)


def test_local_dir_model(tmp_path):
    """The `local-dir:` layout (open_clip_config.json + safetensors), as the toy zoo writes it."""
    from safetensors.torch import save_file

    source = seeded_scorer(5)
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    loaded = ClipScorer(f"local-dir:{folder}")
    np.testing.assert_allclose(loaded.score(images(), PROMPTS), source.score(images(), PROMPTS),
                               rtol=1e-5, atol=1e-4)


def test_text_embeddings_cached():
    scorer = seeded_scorer(0)
    first = scorer.text_features(PROMPTS).clone()
    with torch.no_grad():
        scorer.model.text_projection.neg_()  # changes fresh embeddings, not cached ones
    assert set(scorer._text_cache) == set(PROMPTS)
    assert torch.equal(scorer.text_features(PROMPTS), first)
    scorer.clear_cache()
    assert not torch.equal(scorer.text_features(PROMPTS), first)


def test_bad_inputs():
    scorer = seeded_scorer(0)
    with pytest.raises(MetricError, match="5 images but 2 prompts"):
        scorer.score(images(), PROMPTS[:2])
    with pytest.raises(MetricError, match="glosses"):
        scorer.score(images(), PROMPTS, glosses=["x"])
    with pytest.raises(MetricError):
        scorer.score([], [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    cpu = seeded_scorer(0).score(images(), PROMPTS)
    gpu = seeded_scorer(0, device="cuda").score(images(), PROMPTS)
    np.testing.assert_allclose(cpu, gpu, rtol=1e-3, atol=1e-2)
