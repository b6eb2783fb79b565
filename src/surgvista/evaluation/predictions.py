"""Evaluation outputs: per-sample predictions gathered across ranks, per-video CSV files, metric tables.

Per-video files ``<dir>/<video_id>.csv`` have the header ``frame,target,prediction,prob_<class>...``; for
multi-label tasks ``target`` and ``prediction`` are space-separated class ids (prediction = probability ≥ 0.5).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from surgvista.metrics.table import nan_to_none
from surgvista.utils.errors import UserError


class PredictionFileError(UserError, ValueError):
    """A prediction file that does not follow the format written by :func:`write_prediction_files`."""


class PredictionCollector(Metric):
    """Collects ``(index, video, frame, probs, target)`` per sample; ``compute`` gathers across DDP ranks,
    sorts by dataset index and averages duplicates (the padding of distributed samplers)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("index", "video", "frame", "probs", "target"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, index: torch.Tensor, video: torch.Tensor, frame: torch.Tensor, probs: torch.Tensor, target: torch.Tensor
    ) -> None:
        self.index.append(index.long())
        self.video.append(video.long())
        self.frame.append(frame.long())
        self.probs.append(probs.float())
        self.target.append(target.float() if target.is_floating_point() else target.long())

    def compute(self) -> dict[str, np.ndarray]:
        if not self.index:
            raise RuntimeError("PredictionCollector.compute() called before any update()")
        index, video, frame, probs, target = (
            dim_zero_cat(getattr(self, n)).cpu().numpy() for n in ("index", "video", "frame", "probs", "target")
        )
        keys, first, inverse, counts = np.unique(index, return_index=True, return_inverse=True, return_counts=True)
        mean = np.zeros((len(keys), probs.shape[1]), np.float64)
        np.add.at(mean, inverse, probs)
        return {
            "index": keys,
            "video": video[first],
            "frame": frame[first],
            "probs": (mean / counts[:, None]).astype(np.float32),
            "target": target[first],
        }


def safe_name(video_id: str) -> str:
    """A file-name-safe version of a video id."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", video_id)


# 9 significant digits round-trip float32 exactly: scores computed from the files (surgvista-score) then see the same
# values, ties and top-k order as eval.py did.
PROB_FORMAT = ".9g"


def prob_columns(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} probability columns")
    return [f"prob_{n}" for n in names]


def write_prediction_files(
    out_dir: str | Path,
    preds: dict[str, np.ndarray],
    video_ids: Sequence[str],
    class_names: Sequence[str] | None = None,
    multilabel: bool = False,
) -> list[Path]:
    """One CSV per video (rows sorted by frame) from :meth:`PredictionCollector.compute` output."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = ["frame", "target", "prediction", *prob_columns(class_names, preds["probs"].shape[1])]
    paths = []
    for v in np.unique(preds["video"]):
        rows = np.flatnonzero(preds["video"] == v)
        rows = rows[np.argsort(preds["frame"][rows], kind="stable")]
        path = out_dir / f"{safe_name(video_ids[int(v)])}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for r in rows:
                p = preds["probs"][r]
                if multilabel:
                    target = " ".join(str(k) for k in np.flatnonzero(preds["target"][r] > 0.5))
                    pred = " ".join(str(k) for k in np.flatnonzero(p >= 0.5))
                else:
                    target, pred = int(preds["target"][r]), int(p.argmax())
                w.writerow([int(preds["frame"][r]), target, pred, *(f"{x:{PROB_FORMAT}}" for x in p)])
        paths.append(path)
    return paths


def write_clip_predictions(
    path: str | Path,
    preds: dict[str, np.ndarray],
    video_ids: Sequence[str],
    class_names: Sequence[str] | None = None,
) -> Path:
    """Clip-level tasks: one CSV, one row per clip (``video,target,prediction,prob_<class>...``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["video", "target", "prediction", *prob_columns(class_names, preds["probs"].shape[1])]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in np.argsort(preds["video"], kind="stable"):
            p = preds["probs"][r]
            w.writerow(
                [video_ids[int(preds["video"][r])], int(preds["target"][r]), int(p.argmax()),
                 *(f"{x:{PROB_FORMAT}}" for x in p)]
            )
    return path


def read_prediction_file(path: str | Path, multilabel: bool = False) -> dict[str, np.ndarray | list]:
    """Parse a per-video CSV written by :func:`write_prediction_files`; errors name the file, line and value."""
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if (
        not rows
        or rows[0][:3] != ["frame", "target", "prediction"]
        or len(rows[0]) < 4
        or not all(c.startswith("prob_") for c in rows[0][3:])
    ):
        raise PredictionFileError(
            f"{path}:1: expected header 'frame,target,prediction,prob_<class>...', "
            f"got {','.join(rows[0]) if rows else 'an empty file'!r}"
        )
    width = len(rows[0])
    frames, targets, preds, probs = [], [], [], []
    for lineno, row in enumerate(rows[1:], 2):
        if len(row) != width:
            raise PredictionFileError(f"{path}:{lineno}: expected {width} columns, got {len(row)}: {row!r}")
        try:
            frame = int(row[0])
            prob = [float(x) for x in row[3:]]
            if multilabel:
                target, pred = [int(x) for x in row[1].split()], [int(x) for x in row[2].split()]
            else:
                target, pred = int(row[1]), int(row[2])
        except ValueError as e:
            raise PredictionFileError(f"{path}:{lineno}: non-numeric value in {row!r} ({e})") from e
        if any(not math.isfinite(p) or not 0 <= p <= 1 for p in prob):
            raise PredictionFileError(f"{path}:{lineno}: probabilities must lie in [0, 1], got {prob}")
        if frames and frame <= frames[-1]:
            raise PredictionFileError(f"{path}:{lineno}: frame {frame} not after {frames[-1]} (rows must be sorted)")
        frames.append(frame)
        targets.append(target)
        preds.append(pred)
        probs.append(prob)
    return {
        "frame": np.asarray(frames, np.int64),
        "target": targets if multilabel else np.asarray(targets),
        "prediction": preds if multilabel else np.asarray(preds),
        "probs": np.asarray(probs, np.float32),
        "classes": [c[len("prob_") :] for c in rows[0][3:]],
    }


def write_metrics(out_dir: str | Path, metrics: dict, table: str, name: str = "metrics") -> tuple[Path, Path]:
    """``<name>.json`` (all values) and ``<name>.md`` (the Markdown table) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{name}.json", out_dir / f"{name}.md"
    js.write_text(json.dumps(nan_to_none(metrics), indent=2) + "\n")
    md.write_text(table.rstrip() + "\n")
    return js, md


def log_table(loggers, key: str, metrics: dict, table: str, step: int = 0) -> None:
    """Send the metric table to loggers that take text/tables (W&B table, TensorBoard text); ``metrics`` is flat
    ``{metric: value}`` or nested ``{row: {metric: value}}``."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    nested = bool(metrics) and all(isinstance(v, dict) for v in metrics.values())
    if nested:
        cols = list(dict.fromkeys(c for row in metrics.values() for c in row))
        columns, data = ["", *cols], [[n, *(float(r.get(c, math.nan)) for c in cols)] for n, r in metrics.items()]
    else:
        columns, data = ["metric", "value"], [[k, float(v)] for k, v in metrics.items()]
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.log_text(key=key, columns=columns, data=data)
        elif isinstance(lg, TensorBoardLogger):
            lg.experiment.add_text(key, table, step)


def write_table(out_dir: str | Path, name: str, rows: dict[str, dict[str, float]], title: str, loggers=()) -> None:
    """``<name>.md`` and ``<name>.json`` (NaN → null) of a nested ``{row: {metric: value}}`` table, also sent to
    the loggers under ``<name>``."""
    from surgvista.metrics import metrics_table

    table = metrics_table(rows, title=title)
    write_metrics(out_dir, {r: nan_to_none(row) for r, row in rows.items()}, table, name)
    log_table(loggers, name, rows, table)


def per_video_labels(
    preds: dict[str, np.ndarray], video_ids: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{video id: (target, argmax prediction)}`` in frame order from :meth:`PredictionCollector.compute`
    output, unannotated rows (target -1) dropped."""
    out = {}
    for v in np.unique(preds["video"]):
        rows = np.flatnonzero(preds["video"] == v)
        rows = rows[np.argsort(preds["frame"][rows], kind="stable")]
        target, pred = preds["target"][rows].astype(np.int64), preds["probs"][rows].argmax(1)
        keep = target != -1
        if keep.any():
            out[video_ids[int(v)]] = (target[keep], pred[keep])
    return out
