"""`evomm plan` and the memory check of `evomm evolve`: estimates from headers, at the real 7B shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomm.cli import main
from evomm.errors import EvommError
from evomm.search import estimate
from evomm.search.config import load_config
from miniatures import sparse_7b_sources

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "pipelines" / "evovlm_jp.yml"
GiB = 1024**3


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    return sparse_7b_sources(tmp_path_factory.mktemp("sparse7b"))


def _sets(sources):
    return [f"sources.{name}={path}" for name, path in sources.items()]


def test_stand_ins_are_full_size_on_paper_and_empty_on_disk(sparse):
    import os

    from evomm.search.estimate import checkpoint_params

    assert checkpoint_params(sparse["shisa"]) == 7_241_732_096  # Mistral-7B-v0.1
    apparent = sum(f.stat().st_size for f in sparse["llava"].iterdir())
    on_disk = sum(f.stat().st_blocks * 512 for f in sparse["llava"].iterdir())
    assert apparent > 14e9 and on_disk < 50e6
    assert os.path.getsize(sparse["llava"] / "config.json") < 10_000


def test_plan_of_the_real_vlm_recipe(sparse, capsys):
    assert main(["plan", str(REAL), *[a for s in _sets(sparse) for a in ("--set", s)]]) == 0
    text = capsys.readouterr().out
    assert "ps (ps): genome 128, 291 tensors / 7.24 B parameters merged" in text
    assert "dfs (dfs): genome 4288" in text and "ps_dfs (dfs): genome 4288" in text
    config = load_config(REAL, _sets(sparse))
    ps, dfs, _ = estimate.estimate_run(config)
    # PS, bf16: the LLaVA model + base and two task vectors (2 B each) + two int16 DARE bit arrays
    # per merged element + the KV cache of 25 sequences of 3000 + 64 tokens over 32 layers
    llava = estimate.checkpoint_params(sparse["llava"])
    kv = 25 * 3064 * 32 * 2 * 8 * 128 * 2
    assert ps.device_bytes == llava * 2 + ps.merged_params * (3 * 2 + 2 * 2) + kv
    assert 85 * GiB < ps.device_bytes < 95 * GiB
    # DFS: both sources on the device, KV for a path of at most 64 layers
    shisa = estimate.checkpoint_params(sparse["shisa"])
    assert dfs.device_bytes == (llava + shisa) * 2 + 25 * 3064 * 64 * 2 * 8 * 128 * 2
    # the state on the host instead: the device keeps the model and the cache
    on_host = estimate.estimate_run(load_config(REAL, _sets(sparse) + ["fitness.options.merge_device=cpu"]))[0]
    assert on_host.device_bytes == llava * 2 + kv
    assert on_host.host_bytes > ps.merged_params * 10


def test_evolve_refuses_a_run_this_machine_cannot_hold(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(estimate, "available_memory", lambda device: (None, 1024))  # a 1 kB host
    code = main(["evolve", str(ROOT / "pipelines" / "toy_evovlm_jp.yml"), "--out", str(tmp_path / "run"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "host RAM per evaluator" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "ps").exists()


def test_check_fits_names_the_device_and_the_way_out(sparse, monkeypatch):
    monkeypatch.setattr(estimate, "available_memory", lambda device: (80 * GiB, 2048 * GiB))
    config = load_config(REAL, _sets(sparse))
    with pytest.raises(EvommError, match=r"stage ps needs ~9\d\.\d GiB on cuda .*options.merge_device=cpu"):
        estimate.check_fits(config)
    estimate.check_fits(load_config(REAL, _sets(sparse) + ["fitness.options.merge_device=cpu"]))  # fits 80 GB


def test_plan_of_the_real_sdxl_recipe(tmp_path):
    from miniatures import sparse_sdxl_sources

    sources = sparse_sdxl_sources(tmp_path / "sdxl")
    config = load_config(ROOT / "pipelines" / "evosdxl_jp.yml", _sets(sources))
    (est,) = estimate.estimate_run(config)
    unet = estimate.checkpoint_params(sources["lightning"])
    assert 2.56e9 < unet < 2.57e9  # the SDXL UNet
    # all five layouts were read; task arithmetic over the base: base + 4 task vectors, fp16
    assert est.merged_params == unet and est.genome == 9 * 2 * 4 + 9 * 4
    assert est.device_bytes == unet * 2 + unet * 5 * 2
    assert any("not counted" in note for note in est.notes)
