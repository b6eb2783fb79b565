"""Seeded construction: weights that are a function of a seed alone, whatever ran before."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the torch RNG seeded to ``seed``, then give the caller its CPU RNG state back (a model
    built inside gets the same weights for the same seed and config)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
