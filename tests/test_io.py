"""Checkpoint I/O: lazy sources for every layout, corrupt files, pickles, the sharded writer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from evomm.errors import CheckpointError, OutputExistsError, PickleRefusedError
from evomm.io import PlannedTensor, ShardedWriter, atomic_output_dir, open_source, parse_size, resolve_model_path
from testkit.tiny import save, tiny_mistral, tiny_sdxl_unet


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    return save(tiny_mistral(), tmp_path_factory.mktemp("m") / "mistral")


def test_single_file_hf_dir_reads_lazily(mistral_dir):
    src = open_source(mistral_dir)
    state = tiny_mistral().state_dict()
    assert src.layout == "hf" and src.config["model_type"] == "mistral"
    assert set(src.keys()) == set(state)
    name = "model.layers.1.self_attn.q_proj.weight"
    assert src.shape(name) == tuple(state[name].shape) and src.dtype(name) == torch.float32
    assert torch.equal(src.get(name), state[name])


def test_sharded_writer_round_trip_and_from_pretrained(tmp_path):
    from transformers import MistralForCausalLM

    model = tiny_mistral(seed=3, scale=0.1)
    state = model.state_dict()
    entries = [PlannedTensor(k, tuple(v.shape), v.dtype) for k, v in state.items()]
    writer = ShardedWriter(tmp_path, entries, max_shard_bytes=20_000)
    for k, v in state.items():
        writer.write(k, v)
    writer.close()
    (tmp_path / "config.json").write_text(model.config.to_json_string())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state) and set(index["weight_map"].values()) == set(shards)
    src = open_source(tmp_path)
    assert all(torch.equal(src.get(k), v) for k, v in state.items())
    loaded = MistralForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_writer_bfloat16_and_order_check(tmp_path):
    t = torch.randn(4, 3).bfloat16()
    writer = ShardedWriter(tmp_path, [PlannedTensor("a", (4, 3), torch.bfloat16), PlannedTensor("b", (2,), torch.float32)])
    with pytest.raises(RuntimeError, match="expected 'a'"):
        writer.write("b", torch.zeros(2))
    writer.write("a", t)
    writer.write("b", torch.ones(2))
    writer.close()
    src = open_source(tmp_path / "model.safetensors")
    assert torch.equal(src.get("a"), t) and src.dtype("a") == torch.bfloat16


def test_diffusers_unet_dir_and_pipeline_folder(tmp_path):
    unet = tiny_sdxl_unet()
    save(unet, tmp_path / "pipe" / "unet")
    for path in (tmp_path / "pipe", tmp_path / "pipe" / "unet"):
        src = open_source(path)
        assert src.layout == "diffusers" and src.config["layers_per_block"] == 1
        assert torch.equal(src.get("conv_in.weight"), unet.state_dict()["conv_in.weight"])


def test_single_safetensors_file(tmp_path):
    save_file({"model.diffusion_model.out.2.weight": torch.ones(2, 2)}, str(tmp_path / "sdxl.safetensors"))
    for path in (tmp_path / "sdxl.safetensors", tmp_path):
        src = open_source(path)
        assert src.layout == "single_file" and src.keys() == ["model.diffusion_model.out.2.weight"]


def test_truncated_safetensors_is_a_clear_error(mistral_dir, tmp_path):
    data = (mistral_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        open_source(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        open_source(tmp_path)


def test_pickles_need_opt_in_and_load_weights_only(tmp_path):
    state = {"model.layers.0.x": torch.arange(6.0)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match="allow-pickle"):
        open_source(tmp_path)
    src = open_source(tmp_path, allow_pickle=True)
    assert torch.equal(src.get("model.layers.0.x"), state["model.layers.0.x"])
    torch.save({"state_dict": state}, tmp_path / "x.ckpt")
    with pytest.raises(PickleRefusedError):
        open_source(tmp_path / "x.ckpt")
    assert open_source(tmp_path / "x.ckpt", allow_pickle=True).keys() == ["model.layers.0.x"]


def test_missing_weights_and_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no model weights"):
        open_source(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        open_source(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a local path"):
        resolve_model_path("surely-not/a-model-evomm-test")  # HF_HUB_OFFLINE=1 in tests


def test_atomic_output_dir(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ZeroDivisionError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.bin").write_text("x")
            1 / 0
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_output_dir(out) as tmp:
        (tmp / "done").write_text("ok")
    assert (out / "done").read_text() == "ok" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(OutputExistsError):
        with atomic_output_dir(out):
            pass


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size(7) == 7


class _Arbitrary:
    """Stands for any class a malicious pickle could name."""


def test_unsafe_pickle_is_refused_even_with_opt_in(tmp_path):
    """weights_only=True: a pickle that would run code fails with a CheckpointError."""
    torch.save({"w": torch.ones(2), "obj": _Arbitrary()}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="cannot load pickle safely"):
        open_source(tmp_path / "model.pt", allow_pickle=True)
