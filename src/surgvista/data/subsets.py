"""Label-efficiency subsets of a training split: nested, seeded fractions of its videos and k-shot per class.

Both draw from one seeded permutation (of the sorted video ids, of each class's samples), and a subset is a
prefix of it: for one seed the 1 % videos are inside the 5 % ones, the 1-shot samples inside the 5-shot ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from surgvista.utils.errors import ConfigError


def subset_size(fraction: float, count: int) -> int:
    """``round(fraction × count)`` (halves up), at least 1 and at most ``count``."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data.train_fraction={fraction}: expected a fraction in (0, 1]")
    return min(count, max(1, int(fraction * count + 0.5)))


def nested_video_subset(video_ids: Sequence[str], fraction: float, seed: int = 0) -> list[str]:
    """The videos of a ``fraction`` of ``video_ids``: the first :func:`subset_size` of a ``seed``-permutation of
    the sorted distinct ids (the same seed gives nested subsets for growing fractions)."""
    ids = sorted(set(video_ids))
    if not ids:
        raise ConfigError("data.train_fraction: the training split has no video")
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order[: subset_size(fraction, len(ids))]]


def k_shot_indices(targets: Sequence[int], shots: int, seed: int = 0) -> list[int]:
    """Sample indices holding ``shots`` samples of every class (all of a class with fewer), the first of a
    ``seed``-permutation of that class's samples; unannotated samples (target < 0) are never drawn."""
    if shots < 1:
        raise ConfigError(f"data.train_shots={shots}: expected a positive number of samples per class")
    y = np.asarray(targets)
    if y.ndim != 1:
        raise ConfigError("data.train_shots: k-shot subsets need single-label targets (one class per sample)")
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y[y >= 0]):
        members = np.flatnonzero(y == c)
        keep.extend(members[rng.permutation(len(members))[:shots]].tolist())
    return sorted(keep)
