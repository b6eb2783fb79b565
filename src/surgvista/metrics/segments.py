"""Segment-level phase metrics: edit score and segmental F1@k (the MS-TCN / ASFormer convention).

A *segment* is a maximal run of equal labels in a frame sequence; definitions and the MS-TCN aggregation (edit
averaged over videos, TP/FP/FN pooled before F1) are in ``docs/metrics.md``.
"""

from __future__ import annotations

import math

import numpy as np

from surgvista.metrics.stats import mean

DEFAULT_OVERLAPS = (0.1, 0.25, 0.5)


def segments(labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(label, start, end)`` arrays of the runs of ``labels`` (``end`` exclusive)."""
    x = np.asarray(labels).ravel()
    if x.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    starts = np.r_[0, np.flatnonzero(x[1:] != x[:-1]) + 1]
    ends = np.r_[starts[1:], x.size]
    return x[starts], starts, ends


def levenshtein(a, b) -> int:
    """Edit distance between two sequences (unit costs)."""
    a, b = list(a), list(b)
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def edit_score(pred, target) -> float:
    """Segmental edit score of one video in percent (100 when both sequences are empty)."""
    p, g = segments(pred)[0], segments(target)[0]
    longest = max(len(p), len(g))
    return 100.0 if longest == 0 else (1.0 - levenshtein(p, g) / longest) * 100.0


def overlap_counts(pred, target, overlap: float) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of one video at IoU threshold ``overlap`` (a fraction, e.g. 0.5)."""
    p_label, p_start, p_end = segments(pred)
    g_label, g_start, g_end = segments(target)
    hits = np.zeros(len(g_label), dtype=bool)
    tp = fp = 0
    for label, start, end in zip(p_label, p_start, p_end):
        inter = np.minimum(end, g_end) - np.maximum(start, g_start)
        union = np.maximum(end, g_end) - np.minimum(start, g_start)
        iou = np.where(g_label == label, inter / union, -np.inf) if len(g_label) else np.zeros(0)
        best = int(np.argmax(iou)) if len(iou) else -1
        if best >= 0 and iou[best] >= overlap and not hits[best]:
            tp += 1
            hits[best] = True
        else:
            fp += 1
    return tp, fp, int(len(g_label) - hits.sum())


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """``2PR/(P+R)`` in percent; 0 without true positives."""
    if tp == 0:
        return 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2.0 * precision * recall / (precision + recall) * 100.0


def segment_scores(preds_per_video, targets_per_video, overlaps=DEFAULT_OVERLAPS) -> dict[str, float]:
    """``edit`` (mean over videos) and ``f1@k`` (TP/FP/FN pooled over videos) for lists of per-video labels."""
    preds, targets = list(preds_per_video), list(targets_per_video)
    if len(preds) != len(targets):
        raise ValueError(f"segment_scores: {len(preds)} prediction sequences for {len(targets)} target sequences")
    for i, (p, t) in enumerate(zip(preds, targets)):
        if len(p) != len(t):
            raise ValueError(f"segment_scores: video {i} has {len(p)} predicted frames but {len(t)} target frames")
    out = {"edit": mean([edit_score(p, t) for p, t in zip(preds, targets)]) if preds else math.nan}
    for overlap in overlaps:
        counts = np.array([overlap_counts(p, t, overlap) for p, t in zip(preds, targets)]).reshape(-1, 3)
        out[f"f1@{round(overlap * 100):d}"] = f1_from_counts(*(int(c) for c in counts.sum(axis=0)))
    return out
