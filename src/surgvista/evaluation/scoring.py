"""``surgvista-score``: score the prediction files of any model with surgvista's metrics, no code needed.

    surgvista-score phase GT_DIR PRED_DIR --dataset cholec80 [--relaxed auto|true|false] [--no-matlab-quirk]
                    [--fps 1] [--resample PRED_FPS] [--surgmotion] [--json OUT] [--csv OUT]
    surgvista-score triplet GT PRED [--json OUT]       (CholecT50 labels JSON or our CSVs vs our prediction CSVs)
    surgvista-score clip GT PRED [--top-k 1,5] [--json OUT]
    every task: [--ci [--resamples 1000] [--seed 0]] [--per-video OUT.json]

Phase files: one per video, matched by file stem (``-phase``/``_pred`` style suffixes ignored), either
``Frame<TAB>Phase`` text (integer ids or phase names of ``--dataset``; header optional; the MATLAB evaluation
format) or the ``frame,target,prediction,prob_...`` CSVs that ``surgvista-eval`` writes (GT_DIR may be the same
folder: targets come from the ``target`` column). ``--json`` writes the keys of ``surgvista-eval``'s
``metrics.json``. See ``docs/metrics.md``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ScoreError(ValueError):
    """Input files that cannot be scored (the message names the file and what was expected)."""


@dataclass
class Labels:
    """One video's labels (and, from our CSVs, probabilities), rows sorted by frame."""

    frames: np.ndarray
    labels: np.ndarray | list
    probs: np.ndarray | None = None
    classes: list[str] | None = None


_SUFFIX = re.compile(r"[-_](phase|phases|pred|preds|prediction|predictions|gt|label|labels)$", re.IGNORECASE)
_EXTS = (".txt", ".csv", ".json")


def video_files(folder: Path) -> dict[str, Path]:
    """``{video key: file}`` of a folder of per-video files; duplicates keys are an error."""
    if not folder.is_dir():
        raise ScoreError(f"{folder}: not a folder of per-video files")
    out: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in _EXTS and p.is_file()):
        key = _SUFFIX.sub("", path.stem)  # video41-phase.txt / video41_pred.txt / video41.csv → video41
        if key in out:
            raise ScoreError(f"{folder}: {out[key].name} and {path.name} are both video {key!r}")
        out[key] = path
    if not out:
        raise ScoreError(f"{folder}: no per-video {'/'.join(_EXTS)} files")
    return out


def match_videos(gt: dict[str, Path], pred: dict[str, Path]) -> list[str]:
    """The shared video keys; an error naming the videos present on one side only."""
    only_gt, only_pred = sorted(set(gt) - set(pred)), sorted(set(pred) - set(gt))
    if only_gt or only_pred:
        raise ScoreError(
            f"unmatched videos: no prediction for {only_gt or 'none'}; no ground truth for {only_pred or 'none'} "
            "(files are matched by stem)"
        )
    return sorted(gt)


# --------------------------------------------------------------------------------------------- reading


def read_our_csv(path: Path, column: str, multilabel: bool = False) -> Labels:
    """Our per-video prediction CSV; ``column`` = ``target`` or ``prediction``."""
    from surgvista.evaluation.predictions import PredictionFileError, read_prediction_file

    try:
        d = read_prediction_file(path, multilabel=multilabel)
    except PredictionFileError as e:
        raise ScoreError(str(e)) from e
    return Labels(d["frame"], d[column], d["probs"], d["classes"])


def read_phase_text(path: Path, names: Sequence[str] | None) -> Labels:
    """``Frame<TAB>Phase`` rows (any whitespace; header optional); phases as integer ids or ``names``."""
    index = {n: i for i, n in enumerate(names or ())}
    frames, labels = [], []
    lines = [(n, line.split()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if lines and not lines[0][1][0].lstrip("-").isdigit():
        lines = lines[1:]  # header
    for lineno, parts in lines:
        if len(parts) != 2 or not parts[0].isdigit():
            raise ScoreError(f"{path}:{lineno}: expected '<frame><TAB><phase>', got {' '.join(parts)!r}")
        label = parts[1]
        if label.lstrip("-").isdigit():
            value = int(label)
        elif label in index:
            value = index[label]
        else:
            known = f"one of {list(index)}" if index else "integer ids (no phase names known for this --dataset)"
            raise ScoreError(f"{path}:{lineno}: unknown phase label {label!r}; expected {known}")
        frames.append(int(parts[0]))
        labels.append(value)
    if not frames:
        raise ScoreError(f"{path}: no '<frame><TAB><phase>' rows")
    frames_a = np.asarray(frames, np.int64)
    if (np.diff(frames_a) <= 0).any():
        bad = int(np.flatnonzero(np.diff(frames_a) <= 0)[0]) + 1
        raise ScoreError(f"{path}: frame {frames[bad]} not after {frames[bad - 1]} (rows must be sorted by frame)")
    return Labels(frames_a, np.asarray(labels, np.int64))


def read_phase_file(path: Path, column: str, names: Sequence[str] | None) -> Labels:
    with path.open(newline="") as f:
        ours = next(csv.reader(f), [])[:3] == ["frame", "target", "prediction"]
    return read_our_csv(path, column) if ours else read_phase_text(path, names)


def check_aligned(key: str, gt: Labels, pred: Labels, gt_path: Path, pred_path: Path) -> None:
    """Both files must list the same frames (no silent resampling or truncation)."""
    if len(gt.frames) != len(pred.frames) or not np.array_equal(gt.frames, pred.frames):
        first = next((i for i, (a, b) in enumerate(zip(gt.frames, pred.frames)) if a != b), None)
        where = f"; first difference at row {first}" if first is not None else ""
        raise ScoreError(
            f"video {key}: {gt_path} has {len(gt.frames)} frames but {pred_path} has {len(pred.frames)}{where} "
            "(both must list the same frames: evaluate predictions at the annotation rate, or map them onto the "
            "ground truth's frames explicitly with --resample PRED_FPS)"
        )


def resample_labels(pred: Labels, pred_fps: float, frames: np.ndarray, fps: float) -> Labels:
    """``pred`` (frame indices at ``pred_fps``) at ``frames`` (indices at ``fps``): each target frame takes the
    latest prediction at or before its time (the first prediction before any); the explicit ``--resample``."""
    if pred_fps <= 0 or fps <= 0:
        raise ScoreError(f"--resample: frame rates must be positive, got {pred_fps} and {fps}")
    times = np.asarray(pred.frames, np.float64) / pred_fps
    wanted = np.asarray(frames, np.float64) / fps
    rows = np.clip(np.searchsorted(times, wanted + 1e-9, side="right") - 1, 0, len(times) - 1)
    probs = pred.probs[rows] if pred.probs is not None else None
    return Labels(np.asarray(frames, np.int64), np.asarray(pred.labels)[rows], probs, pred.classes)


# ----------------------------------------------------------------------------------------------- phase


def dataset_phase_names(dataset: str) -> list[str] | None:
    """The phase names of a dataset known to ``surgvista-prepare`` (None for others, e.g. ``demo``)."""
    from surgvista.data.adapters import REGISTRY

    if dataset == "demo":
        from surgvista.data.annotations import CHOLEC80_PHASES

        return list(CHOLEC80_PHASES)
    adapter = REGISTRY.get(dataset.lower())
    names = getattr(adapter, "label_names", None) if adapter is not None else None
    return list(names["phase"]) if isinstance(names, dict) and "phase" in names else None


def load_phase_videos(
    gt_dir: Path, pred_dir: Path, names: Sequence[str] | None, resample: tuple[float, float] | None = None
) -> dict[str, tuple]:
    """``{video: (gt Labels, pred Labels)}`` with aligned frames; unannotated rows (target -1) dropped.
    ``resample=(pred_fps, gt_fps)`` maps the predictions onto the ground truth's frames (``resample_labels``)."""
    gt_files, pred_files = video_files(gt_dir), video_files(pred_dir)
    videos = {}
    for key in match_videos(gt_files, pred_files):
        gt = read_phase_file(gt_files[key], "target", names)
        pred = read_phase_file(pred_files[key], "prediction", names)
        if resample is not None:
            pred = resample_labels(pred, resample[0], gt.frames, resample[1])
        check_aligned(key, gt, pred, gt_files[key], pred_files[key])
        keep = np.asarray(gt.labels) != -1
        gt = Labels(gt.frames[keep], np.asarray(gt.labels)[keep], None, gt.classes)
        probs = pred.probs[keep] if pred.probs is not None else None
        pred = Labels(pred.frames[keep], np.asarray(pred.labels)[keep], probs, pred.classes)
        videos[key] = (gt, pred)
    return videos


def phase_num_classes(videos: dict[str, tuple], names: Sequence[str] | None, given: int | None) -> int:
    """The number of phases: from the prediction CSVs' probability columns, else ``given``, else ``names``."""
    for _, pred in videos.values():
        if pred.classes:
            return len(pred.classes)
    if given:
        return given
    if names:
        return len(names)
    raise ScoreError("the number of phases is unknown: pass --num-classes (or a --dataset with known phase names)")


def score_phase(
    videos: dict[str, tuple], num_classes: int, *, dataset: str, fps: float, relaxed, matlab: bool,
    surgmotion: bool = False,
):  # fmt: skip
    """The metrics ``surgvista-eval`` writes (``PhaseMetrics`` + ``top1``), from aligned label sequences;
    ``surgmotion``: SurgMotion's ``sm_*`` too."""
    from surgvista.metrics import phase_scores
    from surgvista.metrics.surgmotion import surgmotion_scores

    preds = [np.asarray(p.labels) for _, p in videos.values()]
    targets = [np.asarray(g.labels) for g, _ in videos.values()]
    try:
        out = phase_scores(
            preds, targets, num_classes, fps=fps, relaxed=relaxed, matlab_compatible=matlab, dataset=dataset
        )
    except ValueError as e:
        raise ScoreError(str(e)) from e
    if surgmotion:
        out.update(surgmotion_scores(preds, targets))
    probs = [p.probs for _, p in videos.values()]
    if all(p is not None for p in probs):  # only our CSVs carry probabilities
        all_probs, all_t = np.concatenate(probs).astype(np.float64), np.concatenate(targets)
        if num_classes > 5:
            top5 = np.argsort(-all_probs, axis=1, kind="stable")[:, :5]
            out["accuracy_top5"] = float((top5 == all_t[:, None]).any(axis=1).mean() * 100)
        out["top1"] = _torchmetrics_top1(np.concatenate(preds), all_t, num_classes)
    return out


def phase_video_records(
    videos: dict[str, tuple], num_classes: int, *, dataset: str, fps: float, relaxed, matlab: bool,
    surgmotion: bool = False,
):  # fmt: skip
    """Per-video records (``surgvista.metrics.per_video``) of aligned label sequences, as ``score_phase`` scores."""
    from surgvista.metrics.per_video import phase_records

    preds = [np.asarray(p.labels) for _, p in videos.values()]
    targets = [np.asarray(g.labels) for g, _ in videos.values()]
    try:
        return phase_records(
            preds, targets, list(videos), num_classes, fps=fps, relaxed=relaxed, matlab_compatible=matlab,
            dataset=dataset, surgmotion=surgmotion,
        )  # fmt: skip
    except ValueError as e:
        raise ScoreError(str(e)) from e


def _torchmetrics_top1(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """``val/top1``/``test/top1`` exactly as the fine-tuning module logs it (torchmetrics micro accuracy)."""
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy

    value = multiclass_accuracy(torch.as_tensor(pred), torch.as_tensor(target), num_classes, average="micro")
    return float(value) * 100


def per_video_rows(videos: dict[str, tuple], num_classes: int) -> list[dict[str, float | str | int]]:
    """Per video: frames, accuracy and the phase-averaged (nanmean) J/P/R/F1, unrelaxed, clipped at 100."""
    from surgvista.metrics.phase import video_phase_scores
    from surgvista.metrics.stats import nanmean

    rows = []
    for key, (gt, pred) in videos.items():
        s = video_phase_scores(gt.labels, pred.labels, num_classes)
        row: dict[str, float | str | int] = {"video": key, "frames": len(gt.frames), "accuracy": s.accuracy}
        for name in ("jaccard", "precision", "recall", "f1"):
            row[name] = nanmean(np.minimum(getattr(s, name), 100.0))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------- triplet, clip


def read_triplet_file(path: Path, num_classes: int, column: str) -> Labels:
    """CholecT50 labels JSON (``{"annotations": {frame: [[triplet, ...], ...]}}``) or our multi-label CSV."""
    if path.suffix.lower() == ".json":
        from surgvista.data.adapters.triplet import read_json_object, triplets_per_frame

        data = read_json_object(path)
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), dict):
            raise ScoreError(f"{path}: expected a CholecT50 labels JSON with an 'annotations' mapping")
        per_frame = triplets_per_frame(data["annotations"], path, num_classes)
        frames = np.asarray(sorted(per_frame), np.int64)
        labels = [per_frame[int(f)] for f in frames]
        return Labels(frames, labels)
    return read_our_csv(path, column, multilabel=True)


def multi_hot(labels: list, num_classes: int, path: Path) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), np.int64)
    for i, ids in enumerate(labels):
        bad = [k for k in ids if not 0 <= k < num_classes]
        if bad:
            raise ScoreError(f"{path}: row {i}: class id(s) {bad} outside [0, {num_classes - 1}]")
        out[i, ids] = 1
    return out


def load_triplet_videos(gt_dir: Path, pred_dir: Path, num_classes: int) -> tuple[list[str], list, list]:
    """Video keys, per-video multi-hot targets and probabilities (aligned frames)."""
    gt_files, pred_files = video_files(gt_dir), video_files(pred_dir)
    keys, targets, probs = match_videos(gt_files, pred_files), [], []
    for key in keys:
        gt = read_triplet_file(gt_files[key], num_classes, "target")
        pred = read_our_csv(pred_files[key], "prediction", multilabel=True)
        if pred.probs.shape[1] != num_classes:
            raise ScoreError(f"{pred_files[key]}: {pred.probs.shape[1]} probability columns, expected {num_classes}")
        check_aligned(key, gt, pred, gt_files[key], pred_files[key])
        targets.append(multi_hot(gt.labels, num_classes, gt_files[key]))
        probs.append(pred.probs.astype(np.float64))
    return keys, targets, probs


def score_triplet(gt_dir: Path, pred_dir: Path, num_classes: int) -> dict[str, float]:
    """Video-wise mAP_i/v/t/iv/it/ivt (the CholecT50 map for 100 classes, else mAP_ivt only)."""
    from surgvista.metrics import CHOLECT50, COMPONENTS, triplet_scores

    _, targets, probs = load_triplet_videos(gt_dir, pred_dir, num_classes)
    cmap = CHOLECT50 if num_classes == CHOLECT50.num_triplets else None
    return triplet_scores(targets, probs, cmap, COMPONENTS if cmap is not None else ("ivt",))


def read_clip_csv(path: Path) -> dict[str, dict[str, str]]:
    """``{video: row}`` of a clip-level CSV with a ``video`` column (our ``predictions.csv``, or ``video,target``)."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise ScoreError(f"{path}:1: expected a header with a 'video' column, got {reader.fieldnames}")
        rows = {}
        for lineno, row in enumerate(reader, 2):
            if row["video"] in rows:
                raise ScoreError(f"{path}:{lineno}: clip {row['video']!r} listed twice")
            rows[row["video"]] = row
    return rows


def load_clips(gt_path: Path, pred_path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Clip ids (sorted), probabilities (N, C), targets (N,) and the ``prob_<class>`` columns."""
    gt, pred = read_clip_csv(gt_path), read_clip_csv(pred_path)
    match_videos({k: gt_path for k in gt}, {k: pred_path for k in pred})
    cols = [c for c in next(iter(pred.values())) if c.startswith("prob_")]
    if not cols:
        raise ScoreError(f"{pred_path}: no prob_<class> columns")
    try:
        target = np.asarray([int(gt[k]["target"]) for k in sorted(gt)])
        probs = np.asarray([[float(pred[k][c]) for c in cols] for k in sorted(gt)])
    except (KeyError, ValueError, TypeError) as e:
        raise ScoreError(f"{gt_path} / {pred_path}: missing or non-numeric target/probability ({e})") from e
    if target.min() < 0 or target.max() >= len(cols):
        raise ScoreError(f"{gt_path}: targets must lie in [0, {len(cols) - 1}] ({len(cols)} probability columns)")
    return sorted(gt), probs, target, cols


def score_clip(gt_path: Path, pred_path: Path, top_k: Sequence[int]) -> dict[str, float]:
    """``accuracy``/``accuracy_top{k}``, ``balanced_accuracy``, ``mAP`` (``ClipMetrics``) and ``top1``."""
    from surgvista.metrics import clip_scores

    _, probs, target, cols = load_clips(gt_path, pred_path)
    k = tuple(min(x, len(cols)) for x in top_k)
    out = clip_scores(probs, target, top_k=k, class_names=[c[5:] for c in cols])
    out["top1"] = _torchmetrics_top1(probs.argmax(1), target, len(cols))
    return out
