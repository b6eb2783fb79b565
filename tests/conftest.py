"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SMALL_DEMO

os.environ.setdefault("WANDB_MODE", "offline")
# One intra-op thread per process (inherited by subprocess runs): on a 2-core CI machine OpenMP contention
# between a test, its DataLoader workers and its DDP ranks makes small-tensor steps up to 10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _fresh_ddp_port(monkeypatch):
    """An in-process Lightning DDP fit leaves ``MASTER_PORT`` in this process's environment: the runs a later test
    starts would all inherit that one port (two at once: EADDRINUSE), so each test starts without it."""
    monkeypatch.delenv("MASTER_PORT", raising=False)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The small demo dataset, generated once per session."""
    from surgvista.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(root, **SMALL_DEMO)
    return root
