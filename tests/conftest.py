"""Shared test setup: one torch thread (the suite runs on 2-core machines, often beside other jobs)."""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("EVOMM_NUM_THREADS", "1")))


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    """No test may reach a model hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
