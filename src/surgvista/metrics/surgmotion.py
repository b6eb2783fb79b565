"""SurgMotion's per-video phase metrics (its ``foundation_phase_probing`` evaluation), written from its definition.

For each video, on that video's frame labels alone (no relaxed boundaries, no per-phase aggregation over videos):

* ``sm_accuracy``: the fraction of correct frames;
* ``sm_precision``, ``sm_recall``, ``sm_jaccard``, ``sm_f1``: scikit-learn's ``average="macro"`` with its default
  label set (the labels present in the video's ground truth *or* prediction) and ``zero_division=0``: per label
  ``P = TP/#pred``, ``R = TP/#gt``, ``J = TP/(#pred + #gt - TP)``, ``F1 = 2TP/(#pred + #gt)``, each 0 when its
  denominator is 0, then the plain mean over those labels;
* ``sm_edit``: the segmental edit score (``metrics.segments.edit_score``: runs of equal labels, Levenshtein
  distance of the two run sequences, ``(1 - dist / max(len)) * 100``, 100 for two empty sequences).

All in percent. The test-set number of each is the **mean over videos** of the per-video values, and the bootstrap
resamples those per-video values (``metrics/per_video.py`` stores them in every phase record when asked).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from surgvista.metrics.segments import edit_score
from surgvista.metrics.stats import mean

SM_METRICS = ("sm_accuracy", "sm_precision", "sm_recall", "sm_jaccard", "sm_f1", "sm_edit")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def surgmotion_video_scores(target, pred) -> dict[str, float]:
    """The six ``sm_*`` metrics (percent) of one video's integer frame labels (equal lengths, at least 1 frame)."""
    gt, pr = np.asarray(target).ravel(), np.asarray(pred).ravel()
    if gt.shape != pr.shape or gt.size == 0:
        raise ValueError(f"surgmotion scores: {pr.size} predicted and {gt.size} target frames; expected equal, >= 1")
    labels = np.union1d(gt, pr)
    tp = np.array([np.count_nonzero((gt == c) & (pr == c)) for c in labels], dtype=np.float64)
    n_pred = np.array([np.count_nonzero(pr == c) for c in labels], dtype=np.float64)
    n_gt = np.array([np.count_nonzero(gt == c) for c in labels], dtype=np.float64)
    return {
        "sm_accuracy": float(np.count_nonzero(gt == pr)) / gt.size * 100,
        "sm_precision": float(_ratio(tp, n_pred).mean() * 100),
        "sm_recall": float(_ratio(tp, n_gt).mean() * 100),
        "sm_jaccard": float(_ratio(tp, n_pred + n_gt - tp).mean() * 100),
        "sm_f1": float(_ratio(2 * tp, n_pred + n_gt).mean() * 100),
        "sm_edit": float(edit_score(pr, gt)),
    }


def surgmotion_aggregate(per_video: Sequence[dict]) -> dict[str, float]:
    """The mean over videos of each ``sm_*`` value of ``per_video`` (dicts or phase records holding them)."""
    if not per_video:
        raise ValueError("surgmotion scores: no videos given")
    return {k: mean([float(v[k]) for v in per_video]) for k in SM_METRICS}


def surgmotion_scores(preds_per_video, targets_per_video) -> dict[str, float]:
    """SurgMotion's test-set phase metrics: per-video ``sm_*`` values averaged over the videos."""
    preds, targets = list(preds_per_video), list(targets_per_video)
    if len(preds) != len(targets):
        raise ValueError(f"surgmotion scores: {len(preds)} prediction sequences for {len(targets)} target sequences")
    return surgmotion_aggregate([surgmotion_video_scores(t, p) for p, t in zip(preds, targets)])
