"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SMALL_DEMO

os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The small demo dataset, generated once per session."""
    from surgvista.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(root, **SMALL_DEMO)
    return root
