"""``torchmetrics.Metric`` front-ends of the functional metrics, safe under DDP.

Every sample's probabilities, target and key are kept in list states (``dist_reduce_fx="cat"``); ``compute()``
gathers all ranks' rows and merges the ``DistributedSampler`` padding duplicates (``collect.py``) before
evaluating, so results are identical with any number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from surgvista.metrics.classification import clip_scores
from surgvista.metrics.collect import merge_duplicates, split_by_video
from surgvista.metrics.phase import (
    normalise_dataset,
    phase_scores,
    phase_table,
    relaxation,
    resolve_relaxed,
)
from surgvista.metrics.segments import DEFAULT_OVERLAPS
from surgvista.metrics.surgmotion import surgmotion_scores
from surgvista.metrics.triplet import CHOLECT50, COMPONENTS, ComponentMap, triplet_scores, video_ap


def _as_1d_int(name: str, owner: str, x, batch: int) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.shape != (batch,) or x.is_floating_point() or x.dtype == torch.bool:
        raise ValueError(
            f"{owner}.update: {name} must be an integer tensor of shape [{batch}], got {tuple(x.shape)} {x.dtype}"
        )
    return x.detach().to(dtype=torch.int64)


def _as_probs(owner: str, probs, num_classes: int) -> torch.Tensor:
    probs = torch.as_tensor(probs)
    if probs.ndim != 2 or probs.shape[1] != num_classes or not probs.is_floating_point():
        raise ValueError(
            f"{owner}.update: probs must be a float tensor of shape [B, {num_classes}] "
            f"(num_classes={num_classes}), got {tuple(probs.shape)} {probs.dtype}"
        )
    if not torch.isfinite(probs).all():
        raise ValueError(f"{owner}.update: probs contain NaN or Inf")
    return probs.detach().to(dtype=torch.float32)


class _KeyedMetric(Metric):
    """Shared list states: probabilities, targets, video and frame keys."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("probs", "target", "video", "frame"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _store(self, probs: torch.Tensor, target: torch.Tensor, video: torch.Tensor, frame: torch.Tensor) -> None:
        """Append one batch to the states, on the metric's device (so NCCL/gloo can gather them)."""
        for name, value in (("probs", probs), ("target", target), ("video", video), ("frame", frame)):
            getattr(self, name).append(value.to(self.device))

    def _merged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All rows (gathered when synced), duplicates merged; rows keyed ``video == -1`` are never merged."""
        if isinstance(self.probs, list) and not self.probs:
            raise ValueError(f"{type(self).__name__}.compute: no samples; call update() first")
        video, frame, probs, target = (
            dim_zero_cat(getattr(self, n)).cpu().numpy() for n in ("video", "frame", "probs", "target")
        )
        if (video == -1).all():
            return video, frame, probs.astype(np.float64), target
        if (video == -1).any():
            raise ValueError(f"{type(self).__name__}: some updates had sample keys and some had none")
        return merge_duplicates(video, frame, probs, target)

    def _synced(self, fn):
        """Run ``fn`` on the states gathered from all processes (like ``compute`` does)."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            return fn()


class PhaseMetrics(_KeyedMetric):
    """Phase recognition metrics of ``surgvista.metrics.phase.phase_scores`` (percent).

    ``update(probs [B, C], target [B], video [B], frame [B])``: softmax probabilities, phase ids, integer video
    index and frame index (temporal order within a video). Rows whose target equals ``ignore_index`` are dropped.
    ``compute()`` -> the flat dict of ``phase_scores`` plus ``accuracy_top5`` (C > 5).

    ``relaxed``: True / False / ``"auto"`` (on iff ``dataset`` has relaxed-boundary rules: cholec80, autolaparo,
    m2cai16); ``matlab_compatible``: reproduce ``Evaluate.m``'s early-transition indexing (default, comparable
    with published numbers) or apply the corrected rule; ``fps``: frame rate of the evaluated sequences (the
    window is ``10 * fps`` frames); ``surgmotion``: also SurgMotion's per-video ``sm_*`` metrics (their mean over
    videos, ``metrics/surgmotion.py``).
    """

    def __init__(
        self,
        num_classes: int,
        fps: float = 1.0,
        relaxed: bool | str = "auto",
        matlab_compatible: bool = True,
        dataset: str = "cholec80",
        class_names: Sequence[str] | None = None,
        overlaps: Sequence[float] = DEFAULT_OVERLAPS,
        ignore_index: int | None = -1,
        surgmotion: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.surgmotion = surgmotion
        if num_classes < 2:
            raise ValueError(f"PhaseMetrics: num_classes must be >= 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"PhaseMetrics: {len(class_names)} class names for num_classes={num_classes}")
        self.num_classes, self.fps, self.dataset = num_classes, fps, normalise_dataset(dataset)
        self.relaxed = resolve_relaxed(relaxed, dataset)
        if self.relaxed:  # fail at construction, not at the end of a test epoch
            relaxation(dataset, num_classes, fps)
        self.matlab_compatible, self.overlaps, self.ignore_index = matlab_compatible, tuple(overlaps), ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]

    def update(self, probs: torch.Tensor, target: torch.Tensor, video: torch.Tensor, frame: torch.Tensor) -> None:
        probs = _as_probs("PhaseMetrics", probs, self.num_classes)
        batch = probs.shape[0]
        target = _as_1d_int("target", "PhaseMetrics", target, batch)
        video = _as_1d_int("video", "PhaseMetrics", video, batch)
        frame = _as_1d_int("frame", "PhaseMetrics", frame, batch)
        keep = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=bool)
        bad = keep & ((target < 0) | (target >= self.num_classes))
        if bad.any():
            raise ValueError(
                f"PhaseMetrics.update: targets must lie in [0, {self.num_classes - 1}] "
                f"(num_classes={self.num_classes}, ignore_index={self.ignore_index}), got "
                f"{target[bad][:5].tolist()}"
            )
        keep = keep.to(probs.device)
        self._store(
            probs[keep], target.to(probs.device)[keep], video.to(probs.device)[keep], frame.to(probs.device)[keep]
        )

    def _per_video(self) -> dict[int, dict[str, np.ndarray]]:
        video, frame, probs, target = self._merged()
        ids, parts = split_by_video(video, frame, probs, target)
        return {
            int(v): {"frame": f, "target": t.astype(np.int64), "prediction": np.argmax(p, axis=1), "probs": p}
            for v, (f, p, t) in zip(ids, parts)
        }

    def _options(self) -> dict:
        return {"fps": self.fps, "matlab_compatible": self.matlab_compatible, "dataset": self.dataset}

    def compute(self) -> dict[str, float]:
        videos = self._per_video()
        preds = [v["prediction"] for v in videos.values()]
        targets = [v["target"] for v in videos.values()]
        out = phase_scores(
            preds, targets, self.num_classes, relaxed=self.relaxed, overlaps=self.overlaps, **self._options()
        )
        if self.num_classes > 5:
            probs = np.concatenate([v["probs"] for v in videos.values()])
            top5 = np.argsort(-probs, axis=1, kind="stable")[:, :5]
            out["accuracy_top5"] = float((top5 == np.concatenate(targets)[:, None]).any(axis=1).mean() * 100)
        if self.surgmotion:
            out.update(surgmotion_scores(preds, targets))
        return out

    def predictions(self) -> dict[int, dict[str, np.ndarray]]:
        """Per video index (gathered over processes, duplicates averaged): ``frame``, ``target``,
        ``prediction`` (argmax of ``probs``) and ``probs`` arrays sorted by frame - e.g. for per-video CSVs."""
        return self._synced(self._per_video)

    def per_phase(self, relaxed: bool = False) -> dict[str, dict[str, float]]:
        """Per-phase Jaccard/precision/recall/F1 (mean and std over videos), keyed by class name."""
        videos = self.predictions()
        return phase_table(
            [v["prediction"] for v in videos.values()],
            [v["target"] for v in videos.values()],
            self.num_classes,
            self.class_names,
            relaxed=relaxed,
            **self._options(),
        )


class TripletMetrics(_KeyedMetric):
    """Video-wise triplet mAP of ``surgvista.metrics.triplet`` (the ivtmetrics challenge protocol), percent.

    ``update(probs [B, N], target [B, N] multi-hot, video [B], frame [B])`` with sigmoid probabilities.
    ``compute()`` -> ``mAP_i, mAP_v, mAP_t, mAP_iv, mAP_it, mAP_ivt`` (only ``mAP_ivt`` without a component map).
    ``per_class_ap(component)`` -> ``{class name: AP}``.
    """

    def __init__(
        self,
        num_classes: int = 100,
        component_map: ComponentMap | None = CHOLECT50,
        ignore_null: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if component_map is not None and component_map.num_triplets != num_classes:
            raise ValueError(
                f"TripletMetrics: num_classes={num_classes} but the component map has "
                f"{component_map.num_triplets} triplets (pass component_map=None for a dataset "
                "without one)"
            )
        self.num_classes, self.component_map, self.ignore_null = num_classes, component_map, ignore_null
        self.components = COMPONENTS if component_map is not None else ("ivt",)

    def update(self, probs: torch.Tensor, target: torch.Tensor, video: torch.Tensor, frame: torch.Tensor) -> None:
        probs = _as_probs("TripletMetrics", probs, self.num_classes)
        target = torch.as_tensor(target)
        if target.shape != probs.shape:
            raise ValueError(
                f"TripletMetrics.update: target must be multi-hot of shape {tuple(probs.shape)} "
                f"(num_classes={self.num_classes}), got {tuple(target.shape)}"
            )
        if ((target != 0) & (target != 1)).any():
            raise ValueError("TripletMetrics.update: target must be multi-hot (0/1 values)")
        self._store(
            probs,
            target.detach().to(dtype=torch.int64),
            _as_1d_int("video", "TripletMetrics", video, probs.shape[0]),
            _as_1d_int("frame", "TripletMetrics", frame, probs.shape[0]),
        )

    def _videos(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        video, _, probs, target = self._merged()
        _, parts = split_by_video(video, target, probs)
        return [t for t, _ in parts], [p for _, p in parts]

    def compute(self) -> dict[str, float]:
        targets, probs = self._videos()
        return triplet_scores(targets, probs, self.component_map, self.components, self.ignore_null)

    def per_class_ap(self, component: str = "ivt") -> dict[str, float]:
        """AP (percent, NaN = class absent from every video) per class of ``component``, keyed by name."""
        targets, probs = self._synced(self._videos)
        ids, ap, _ = video_ap(targets, probs, component, self.component_map, self.ignore_null)
        names = self.component_map.class_names(component) if self.component_map is not None else map(str, ids)
        return dict(zip(names, ap.tolist()))


class ClipMetrics(_KeyedMetric):
    """Clip/frame classification metrics of ``surgvista.metrics.classification.clip_scores`` (percent).

    ``update(probs [B, C], target [B] (or [B, C] multi-hot when multilabel), index [B] | None)``: ``index`` is a
    sample id used to average DistributedSampler duplicates; without it every row counts.
    ``compute()`` -> ``accuracy``, ``accuracy_top{k}``, ``balanced_accuracy``, ``mAP`` (+ per class).
    """

    def __init__(
        self,
        num_classes: int,
        top_k: Sequence[int] | None = None,
        multilabel: bool = False,
        absent: str = "exclude",
        threshold: float = 0.5,
        class_names: Sequence[str] | None = None,
        per_class: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if multilabel and top_k:
            raise ValueError("ClipMetrics: top-k accuracy is undefined for multi-label targets; leave top_k unset")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"ClipMetrics: {len(class_names)} class names for num_classes={num_classes}")
        self.num_classes, self.multilabel = num_classes, multilabel
        self.top_k = () if multilabel else tuple(top_k if top_k is not None else (1, 5))
        self.absent, self.threshold, self.class_names, self.per_class = absent, threshold, class_names, per_class

    def update(self, probs: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> None:
        probs = _as_probs("ClipMetrics", probs, self.num_classes)
        batch = probs.shape[0]
        target = torch.as_tensor(target)
        if self.multilabel:
            if target.shape != probs.shape:
                raise ValueError(
                    f"ClipMetrics.update: multi-label target must have shape {tuple(probs.shape)}, "
                    f"got {tuple(target.shape)}"
                )
        else:
            target = _as_1d_int("target", "ClipMetrics", target, batch)
            if ((target < 0) | (target >= self.num_classes)).any():
                raise ValueError(
                    f"ClipMetrics.update: targets must lie in [0, {self.num_classes - 1}] "
                    f"(num_classes={self.num_classes})"
                )
        if index is None:  # key -1: rows are kept as they are, never merged
            index = torch.full((batch,), -1, dtype=torch.int64)
        else:
            index = _as_1d_int("index", "ClipMetrics", index, batch)
            if (index < 0).any():
                raise ValueError("ClipMetrics.update: index must be non-negative sample ids")
        self._store(probs, target.detach().to(dtype=torch.int64), index, torch.zeros(batch, dtype=torch.int64))

    def compute(self) -> dict[str, float]:
        _, _, probs, target = self._merged()
        return clip_scores(
            probs,
            target,
            multilabel=self.multilabel,
            top_k=self.top_k,
            absent=self.absent,
            threshold=self.threshold,
            class_names=self.class_names,
            per_class=self.per_class,
        )
