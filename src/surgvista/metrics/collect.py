"""Merging keyed predictions: rows with the same ``(video, frame)`` key are averaged.

Duplicates only arise from ``DistributedSampler`` padding, which repeats samples so that every rank gets the same
number; averaging their probabilities (in float64) before the argmax makes the result independent of the number
of processes. Rows come back sorted by ``(video, frame)``.
"""

from __future__ import annotations

import numpy as np


def merge_duplicates(video, frame, probs, target) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Average ``probs`` over rows sharing ``(video, frame)``; ``target`` must agree within a key.

    Returns ``(video, frame, probs, target)`` with one row per key, sorted by video then frame.
    """
    video, frame = np.asarray(video, dtype=np.int64), np.asarray(frame, dtype=np.int64)
    probs, target = np.asarray(probs, dtype=np.float64), np.asarray(target)
    n = video.shape[0]
    if not (frame.shape[0] == probs.shape[0] == target.shape[0] == n):
        raise ValueError(
            f"merge_duplicates: {n} videos, {frame.shape[0]} frames, {probs.shape[0]} probability rows "
            f"and {target.shape[0]} targets; expected one of each per sample"
        )
    order = np.lexsort((frame, video))
    video, frame, probs, target = video[order], frame[order], probs[order], target[order]
    first = np.r_[True, (video[1:] != video[:-1]) | (frame[1:] != frame[:-1])] if n else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(first)
    counts = np.diff(np.r_[starts, n])
    group = np.cumsum(first) - 1
    differs = (target != target[starts][group]).reshape(n, -1).any(axis=1)
    if differs.any():
        i = int(np.flatnonzero(differs)[0])
        raise ValueError(
            f"conflicting targets for the same sample (video {video[i]}, frame {frame[i]}): "
            f"{target[starts][group][i].tolist()} vs {target[i].tolist()}"
        )
    if n and counts.max() > 1:
        probs = np.add.reduceat(probs, starts, axis=0) / counts.reshape(-1, *([1] * (probs.ndim - 1)))
    else:
        probs = probs[starts]
    return video[starts], frame[starts], probs, target[starts]


def split_by_video(video: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, ...]]]:
    """Video ids (sorted) and, per video, the slices of ``arrays`` (rows must be sorted by video)."""
    ids, starts = np.unique(video, return_index=True)
    bounds = np.r_[starts, len(video)]
    return ids, [tuple(a[bounds[j] : bounds[j + 1]] for a in arrays) for j in range(len(ids))]
