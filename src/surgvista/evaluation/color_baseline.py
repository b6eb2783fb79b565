"""The colour-histogram baseline: how much of a frame label global colour alone gives away.

Per frame, a joint RGB histogram (``bins``³ cells, normalised to sum 1) is the whole feature; a classifier fit on
the training videos' frames (multinomial logistic regression on standardised histograms, or the nearest class
centroid) labels the test videos' frames. On the demo, whose phases differ by colour, it scores far above chance;
on the proxy (docs/proxy.md), whose colours are random per video, it should score near chance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from surgvista.data.manifest import read_manifest
from surgvista.data.readers import EntryReader
from surgvista.metrics.bootstrap import bootstrap_ci

CLASSIFIERS = ("logreg", "centroid")


@dataclass(frozen=True)
class ColorBaselineResult:
    """Frame accuracy of the colour baseline on the test videos, with the chance levels to read it against."""

    accuracy: float
    accuracy_lo: float  # 95 % percentile bootstrap interval over the test videos (1000 resamples, seed 0)
    accuracy_hi: float
    uniform_chance: float  # 1 / number of classes
    majority_chance: float  # accuracy of always predicting the test set's most frequent label
    num_train_frames: int
    num_test_frames: int
    num_test_videos: int
    classifier: str
    bins: int
    video_accuracies: tuple[float, ...] = ()  # frame accuracy of each test video, in manifest order

    def as_dict(self) -> dict:
        """The fields as a plain dict (JSON-ready)."""
        return asdict(self)


def color_histograms(frames: np.ndarray, bins: int = 8) -> np.ndarray:
    """Joint RGB histograms ``(N, bins**3)`` (rows sum to 1) of uint8 frames ``(N, H, W, 3)``."""
    q = frames.astype(np.int64) * bins // 256
    cell = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    flat = cell.reshape(len(frames), -1)
    hist = np.zeros((len(frames), bins**3), np.float64)
    np.add.at(hist, (np.arange(len(frames))[:, None], flat), 1.0)
    return hist / flat.shape[1]


def manifest_histograms(
    manifest: str | Path, label: str = "phase", bins: int = 8, backend: str = "pyav"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Histograms and labels of every frame of every video of ``manifest``, and each frame's video number."""
    reader = EntryReader(backend)
    feats, labels = [], []
    entries = read_manifest(manifest).entries
    for entry in entries:
        frames = reader.read(entry, range(entry.num_frames))
        feats.append(color_histograms(frames, bins))
        labels.append(np.asarray(entry.labels[label], np.int64)[: entry.num_frames])
    videos = np.concatenate([np.full(len(y), v) for v, y in enumerate(labels)])
    return np.concatenate(feats), np.concatenate(labels), videos


def pooled_accuracy(videos: list[tuple[int, int]]) -> dict[str, float]:
    """``{"accuracy": right / frames}`` pooled over per-video ``(right, frames)`` counts."""
    return {"accuracy": float(sum(r for r, _ in videos) / sum(n for _, n in videos))}


def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classifier: str) -> np.ndarray:
    """Labels of ``test_x`` from a ``logreg`` (standardised features) or ``centroid`` classifier fit on train."""
    if classifier == "centroid":
        classes = np.unique(train_y)
        centroids = np.stack([train_x[train_y == c].mean(0) for c in classes])
        dist = ((test_x[:, None, :] - centroids[None]) ** 2).sum(-1)
        return classes[dist.argmin(1)]
    if classifier != "logreg":
        raise ValueError(f"unknown colour-baseline classifier {classifier!r}; expected one of {CLASSIFIERS}")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return model.fit(train_x, train_y).predict(test_x)


def color_baseline(
    train_manifest: str | Path,
    test_manifest: str | Path,
    label: str = "phase",
    bins: int = 8,
    classifier: str = "logreg",
    backend: str = "pyav",
) -> ColorBaselineResult:
    """Fit the colour-histogram classifier on ``train_manifest``'s frames and score it on ``test_manifest``'s."""
    train_x, train_y, _ = manifest_histograms(train_manifest, label, bins, backend)
    test_x, test_y, videos = manifest_histograms(test_manifest, label, bins, backend)
    pred = fit_predict(train_x, train_y, test_x, classifier)
    counts = np.bincount(test_y)
    per_video = [((pred == test_y)[videos == v].sum(), (videos == v).sum()) for v in np.unique(videos)]
    ci = bootstrap_ci(per_video, pooled_accuracy)["accuracy"]
    return ColorBaselineResult(
        accuracy=ci.value,
        accuracy_lo=ci.lo,
        accuracy_hi=ci.hi,
        uniform_chance=1.0 / len(np.unique(np.concatenate([train_y, test_y]))),
        majority_chance=float(counts.max() / counts.sum()),
        num_train_frames=len(train_y),
        num_test_frames=len(test_y),
        num_test_videos=len(per_video),
        classifier=classifier,
        bins=bins,
        video_accuracies=tuple(float(r / n) for r, n in per_video),
    )
