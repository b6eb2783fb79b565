"""Clip- and frame-level classification metrics (CVS, action recognition).

Top-k accuracy (ties to the lower class index), balanced accuracy (scikit-learn's rule) and one-vs-rest AP /
mAP with the ``absent`` policy, as described in ``docs/metrics.md``. All values are percentages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from surgvista.metrics.ap import average_precision_per_class
from surgvista.metrics.stats import mean, nanmean

ABSENT_POLICIES = ("exclude", "zero")


def _check_single(probs, target) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(probs, dtype=np.float64), np.asarray(target)
    if p.ndim != 2 or t.shape != (p.shape[0],):
        raise ValueError(f"expected probabilities (N, C) and integer targets (N,), got {p.shape} and {t.shape}")
    if t.size and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= p.shape[1]):
        raise ValueError(f"targets must be integers in [0, {p.shape[1] - 1}] for {p.shape[1]} classes")
    return p, t


def topk_accuracy(probs, target, k: int = 1) -> float:
    """Top-k accuracy (percent) of single-label targets (N,) under scores (N, C)."""
    p, t = _check_single(probs, target)
    if not 1 <= k <= p.shape[1]:
        raise ValueError(f"top-k accuracy: k={k} must lie in [1, {p.shape[1]}] (number of classes)")
    if t.size == 0:
        return math.nan
    # Our own: ties go to the lower class index (docs/metrics.md); torchmetrics' torch.topk does not promise that.
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return float(np.count_nonzero((top == t[:, None]).any(axis=1))) / t.size * 100


def balanced_accuracy(probs, target) -> float:
    """Single-label balanced accuracy (percent): mean recall over the classes present in ``target``."""
    p, t = _check_single(probs, target)
    pred = np.argmax(p, axis=1)
    # Our own: scikit-learn's classes-in-the-targets rule; torchmetrics' macro recall counts only-predicted classes.
    recalls = [np.count_nonzero(pred[t == c] == c) / np.count_nonzero(t == c) for c in np.unique(t)]
    return mean(recalls) * 100


def multilabel_balanced_accuracy(probs, target, threshold: float = 0.5) -> np.ndarray:
    """Per-label balanced accuracy (percent), (C,), for multi-hot targets (N, C) and scores thresholded at
    ``threshold`` (``score >= threshold`` is positive)."""
    p, t = np.asarray(probs, dtype=np.float64), np.asarray(target).astype(bool)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"expected probabilities and multi-hot targets of one (N, C) shape, got {p.shape}, {t.shape}")
    pred = p >= threshold
    out = np.full(p.shape[1], np.nan)
    for c in range(p.shape[1]):
        pos, neg = t[:, c], ~t[:, c]
        rates = []
        if pos.any():
            rates.append(np.count_nonzero(pred[pos, c]) / np.count_nonzero(pos))
        if neg.any():
            rates.append(np.count_nonzero(~pred[neg, c]) / np.count_nonzero(neg))
        out[c] = sum(rates) / len(rates) * 100 if rates else np.nan
    return out


def per_class_ap(probs, target, multilabel: bool = False) -> np.ndarray:
    """One-vs-rest AP per class (percent), NaN for classes without positives."""
    p = np.asarray(probs, dtype=np.float64)
    if multilabel:
        t = np.asarray(target)
        if t.shape != p.shape:
            raise ValueError(f"multi-label AP: targets {t.shape} and probabilities {p.shape} must match")
    else:
        p, labels = _check_single(p, target)
        t = labels[:, None] == np.arange(p.shape[1])[None, :]
    return average_precision_per_class(t, p) * 100


def mean_ap(ap: np.ndarray, absent: str = "exclude") -> float:
    """mAP over classes; classes without AP (NaN) excluded or counted as 0 (``absent``)."""
    if absent not in ABSENT_POLICIES:
        raise ValueError(f"absent must be one of {ABSENT_POLICIES}, got {absent!r}")
    return nanmean(ap) if absent == "exclude" else mean(np.nan_to_num(ap, nan=0.0))


def clip_scores(
    probs,
    target,
    *,
    multilabel: bool = False,
    top_k: Sequence[int] = (1, 5),
    absent: str = "exclude",
    threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    per_class: bool = False,
) -> dict[str, float]:
    """``accuracy`` (top-1) and ``accuracy_top{k}``, ``balanced_accuracy``, ``mAP`` (+ ``ap/<class>`` and, for
    multi-label, ``balanced_accuracy/<class>`` when ``per_class``). Top-k values larger than the number of
    classes are skipped; multi-label tasks have no top-k."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"expected probabilities (N, C), got shape {p.shape}")
    names = list(class_names) if class_names is not None else [str(c) for c in range(p.shape[1])]
    if len(names) != p.shape[1]:
        raise ValueError(f"{len(names)} class names for {p.shape[1]} classes")
    ap = per_class_ap(p, target, multilabel)
    out: dict[str, float] = {}
    if multilabel:
        bal = multilabel_balanced_accuracy(p, target, threshold)
        out["balanced_accuracy"] = nanmean(bal)
    else:
        for k in top_k:
            if k <= p.shape[1]:
                out["accuracy" if k == 1 else f"accuracy_top{k}"] = topk_accuracy(p, target, k)
        out["balanced_accuracy"] = balanced_accuracy(p, target)
    out["mAP"] = mean_ap(ap, absent)
    if per_class:
        out.update({f"ap/{n}": float(v) for n, v in zip(names, ap)})
        if multilabel:
            out.update({f"balanced_accuracy/{n}": float(v) for n, v in zip(names, bal)})
    return out
