"""Non-interpolated average precision, the scikit-learn ``average_precision_score`` convention.

``AP = sum_n (R_n - R_{n-1}) * P_n`` over the distinct score thresholds taken in decreasing order (tied scores
form one threshold), with ``R_0 = 0``. A class without any positive sample has no defined AP: it is returned as
NaN here. (scikit-learn 1.1-1.5 returns ``-0.0`` for it and 1.6+ returns ``0.0``; ``ivtmetrics`` turns the
``-0.0`` into NaN, see ``docs/metrics.md``.) Values are fractions in [0, 1]; callers scale to percent.

Our own code on purpose: ivtmetrics parity needs NaN for classes without positives (torchmetrics returns 0 or -0).
"""

from __future__ import annotations

import math

import numpy as np


def average_precision(target, score) -> float:
    """AP of one binary problem: ``target`` (N,) in {0, 1}, ``score`` (N,) real; NaN without positives."""
    y = np.asarray(target).astype(np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"average_precision: target and score must have the same length, got {y.size} and {s.size}")
    if not np.isfinite(s).all():
        raise ValueError("average_precision: scores must be finite (got NaN or Inf)")
    if y.size == 0 or not y.any():
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_threshold]
    predicted = last_of_threshold + 1.0
    precision = tps / predicted
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision_per_class(target, score) -> np.ndarray:
    """AP of every column of ``target``/``score`` (N, K): a (K,) array, NaN for columns without positives."""
    y = np.asarray(target)
    s = np.asarray(score)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(
            f"average_precision_per_class: expected two (N, K) arrays of one shape, got {y.shape} and {s.shape}"
        )
    return np.array([average_precision(y[:, k], s[:, k]) for k in range(y.shape[1])], dtype=np.float64)
