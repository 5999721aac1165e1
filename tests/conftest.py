"""Shared test setup: one torch thread (the suite runs on 2-core machines, often beside other jobs)
and the repository root on sys.path, for `testkit` (test helpers, not part of the installed package)."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

torch.set_num_threads(int(os.environ.get("EVOMM_NUM_THREADS", "1")))


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    """No test may reach a model hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
