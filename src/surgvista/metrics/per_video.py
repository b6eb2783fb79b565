"""Per-video records of every task, and the headline metrics recomputed from any list of them.

A record holds what one video contributes to a test-set metric, so that the metric of any list of records (the
test set, or a bootstrap resample, ``metrics/bootstrap.py``) is computed exactly as the headline number is:

* phase: the unclipped per-phase J/P/R/F1 and accuracy (``video_phase_scores``, unrelaxed and ``relaxed_``), the
  correct and total frame counts (pooled ``accuracy``), the edit score and the TP/FP/FN counts of ``f1@k``; the
  metric is ``Main.m``'s aggregation (``aggregate_phase_scores``), pooled accuracy, mean edit, pooled F1@k;
  with ``surgmotion=True`` also SurgMotion's per-video ``sm_*`` values (``metrics/surgmotion.py``), whose metric
  is their mean over the videos;
* triplet: the per-video AP of every class of every component (``ivt`` without the null triplets when
  ``ignore_null``); the metric is the per-class nanmean over the videos then the nanmean over classes, as
  ``video_ap`` (per-video AP depends on that video's frames only, so this equals recomputing from the frames);
* clip / frame classification (CVS, actions): the probabilities and targets of the samples of one video (of one
  clip for clip-level tasks); the metric is ``clip_scores`` on the pooled samples (top-1, balanced accuracy, mAP).

Records are plain dicts of numbers and lists (JSON-ready; ``None`` reads as NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from surgvista.metrics.ap import average_precision_per_class
from surgvista.metrics.classification import clip_scores
from surgvista.metrics.phase import (
    VideoPhaseScores,
    aggregate_phase_scores,
    check_videos,
    relaxation,
    relaxed_correct,
    resolve_relaxed,
    video_phase_scores,
)
from surgvista.metrics.segments import DEFAULT_OVERLAPS, edit_score, f1_from_counts, overlap_counts
from surgvista.metrics.stats import mean
from surgvista.metrics.surgmotion import SM_METRICS, surgmotion_aggregate, surgmotion_video_scores
from surgvista.metrics.triplet import CHOLECT50, COMPONENTS, ComponentMap

PHASE_SCORES = ("jaccard", "precision", "recall", "f1")
#: The headline metrics that get intervals, per task (those a task does not produce are skipped).
HEADLINE = {
    "phase": (
        "top1", "accuracy", "video_accuracy_mean", "jaccard", "precision", "recall", "f1",
        "relaxed_accuracy", "relaxed_video_accuracy_mean", "relaxed_jaccard", "relaxed_precision", "relaxed_recall",
        "relaxed_f1", "edit", "f1@10", "f1@25", "f1@50", *SM_METRICS,
    ),
    "triplet": tuple(f"mAP_{c}" for c in ("ivt", *COMPONENTS[:-1])),
    "clip": ("top1", "accuracy", "balanced_accuracy", "mAP"),
}  # fmt: skip


def _phase_part(target, pred, num_classes: int, correct, prefix: str) -> dict:
    s = video_phase_scores(target, pred, num_classes, correct)
    part = {prefix + n: getattr(s, n).tolist() for n in PHASE_SCORES}
    ok = (np.asarray(target) == np.asarray(pred)) if correct is None else correct
    part.update({prefix + "accuracy": s.accuracy, prefix + "correct": int(np.count_nonzero(ok))})
    return part


def phase_records(
    preds: Sequence,
    targets: Sequence,
    videos: Sequence[str],
    num_classes: int,
    *,
    fps: float = 1.0,
    relaxed: bool | str = "auto",
    matlab_compatible: bool = True,
    dataset: str = "cholec80",
    overlaps: Sequence[float] = DEFAULT_OVERLAPS,
    surgmotion: bool = False,
) -> list[dict]:
    """One record per video of integer label sequences (checked as ``phase_scores`` checks them); ``surgmotion``:
    each record also holds the video's ``sm_*`` values (SurgMotion's per-video sklearn metrics)."""
    preds, targets = check_videos(preds, targets, num_classes)
    if len(videos) != len(preds):
        raise ValueError(f"phase records: {len(videos)} video ids for {len(preds)} videos")
    relax = resolve_relaxed(relaxed, dataset)
    if relax:
        rules, window = relaxation(dataset, num_classes, fps)
    records = []
    for vid, p, t in zip(videos, preds, targets):
        rec = {"video": str(vid), "frames": int(t.size), "edit": edit_score(p, t)}
        rec.update(_phase_part(t, p, num_classes, None, ""))
        if relax:
            ok = relaxed_correct(t, p, rules, window, matlab_compatible)
            rec.update(_phase_part(t, p, num_classes, ok, "relaxed_"))
        rec.update({f"f1@{round(k * 100):d}": list(overlap_counts(p, t, k)) for k in overlaps})
        if surgmotion:
            rec.update(surgmotion_video_scores(t, p))
        records.append(rec)
    return records


def _phase_aggregate(records: Sequence[dict], prefix: str) -> dict[str, float]:
    def arr(r: dict, name: str) -> np.ndarray:
        return np.asarray(r[prefix + name], dtype=np.float64)

    videos = [VideoPhaseScores(*(arr(r, n) for n in PHASE_SCORES), float(r[prefix + "accuracy"])) for r in records]
    agg = aggregate_phase_scores(videos, prefix)
    frames = sum(int(r["frames"]) for r in records)
    out = {prefix + "accuracy": float(sum(int(r[prefix + "correct"]) for r in records)) / frames * 100}
    out.update({prefix + k: agg[prefix + k] for k in ("video_accuracy_mean", *PHASE_SCORES)})
    return out


def phase_metric(records: Sequence[dict]) -> dict[str, float]:
    """The phase headline metrics of a list of records (equal to ``phase_scores`` on the same videos; ``sm_*``
    when the records hold them, equal to ``surgmotion_scores``)."""
    out = _phase_aggregate(records, "")
    out["top1"] = out["accuracy"]
    if "relaxed_correct" in records[0]:
        out.update(_phase_aggregate(records, "relaxed_"))
    out["edit"] = mean([r["edit"] for r in records])
    for key in (k for k in records[0] if k.startswith("f1@")):
        out[key] = f1_from_counts(*(int(c) for c in np.sum([r[key] for r in records], axis=0)))
    if SM_METRICS[0] in records[0]:
        out.update(surgmotion_aggregate(records))
    return out


def triplet_records(
    targets: Sequence,
    probs: Sequence,
    videos: Sequence[str],
    component_map: ComponentMap | None = CHOLECT50,
    ignore_null: bool = True,
) -> list[dict]:
    """Per video, ``{"video", "ap": {component: per-class AP (fraction, NaN without positives)}}``."""
    components = COMPONENTS if component_map is not None else ("ivt",)
    records = []
    for vid, t, p in zip(videos, targets, probs, strict=True):
        t, p = np.asarray(t), np.asarray(p, dtype=np.float64)
        ap = {}
        for c in components:
            tc, pc = (component_map.decompose(t, c), component_map.decompose(p, c)) if component_map else (t, p)
            values = average_precision_per_class(tc, pc)
            if c == "ivt" and ignore_null and component_map is not None:
                values = np.delete(values, list(component_map.null_triplets))
            ap[c] = values.tolist()
        records.append({"video": str(vid), "ap": ap})
    return records


def triplet_metric(records: Sequence[dict]) -> dict[str, float]:
    """``mAP_<component>`` (percent): per-class nanmean over the videos, then nanmean over the classes."""
    out = {}
    for c in records[0]["ap"]:
        ap = np.asarray([r["ap"][c] for r in records], dtype=np.float64)  # (videos, classes)
        seen = np.isfinite(ap)
        per_class = np.nansum(ap, axis=0)[seen.any(0)] / seen.sum(0)[seen.any(0)]
        out[f"mAP_{c}"] = float(per_class.mean() * 100) if per_class.size else float("nan")
    return out


def clip_records(probs, target, videos: Sequence[str]) -> list[dict]:
    """One record per distinct ``videos`` value (the samples' video, or clip id), in first-seen order."""
    probs, target, videos = np.asarray(probs, dtype=np.float64), np.asarray(target), [str(v) for v in videos]
    if not len(videos) == len(probs) == len(target):
        raise ValueError(f"clip records: {len(probs)} probability rows, {len(target)} targets, {len(videos)} ids")
    order = list(dict.fromkeys(videos))
    rows = {v: [] for v in order}
    for i, v in enumerate(videos):
        rows[v].append(i)
    return [{"video": v, "probs": probs[rows[v]].tolist(), "target": target[rows[v]].tolist()} for v in order]


def clip_metric(records: Sequence[dict]) -> dict[str, float]:
    """Top-1 (``accuracy`` = ``top1``), balanced accuracy and mAP of the pooled samples (``clip_scores``)."""
    probs = np.concatenate([np.asarray(r["probs"], dtype=np.float64) for r in records])
    target = np.concatenate([np.asarray(r["target"], dtype=np.int64) for r in records])
    out = clip_scores(probs, target, top_k=(1,))
    out["top1"] = out["accuracy"]
    return out


METRICS = {"phase": phase_metric, "triplet": triplet_metric, "clip": clip_metric}


def task_metric(task: str):
    """The record-list metric of ``task`` (``phase``, ``triplet`` or ``clip``)."""
    if task not in METRICS:
        raise ValueError(f"unknown per-video task {task!r}; expected one of {sorted(METRICS)}")
    return METRICS[task]
