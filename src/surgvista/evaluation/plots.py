"""Evaluation figures as RGB arrays (matplotlib's Agg canvas, no pyplot state): phase ribbons, a normalised
confusion matrix and per-class AP bars (written and logged by ``surgvista.evaluation.reconstruction.log_image``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Ribbon "outcome" row: wrong, correct, wrong but forgiven by the relaxed boundary rules (none is a tab10/tab20
# phase colour).
OUTCOME_COLORS = ("#000000", "#d9d9d9", "#ffd700")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _to_array(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def class_colors(n: int) -> list:
    """The phase/class palette (RGBA floats): tab10 up to 10 classes, tab20 beyond (also the stream overlays')."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _cells(ax, rows: np.ndarray, extent: tuple[float, float, float, float], colors: Sequence) -> None:
    """Integer ids ``rows`` (R, T) drawn as cells coloured ``colors[id]`` over ``extent`` (left, right, bottom, top)."""
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(colors)
    ax.imshow(rows, aspect="auto", interpolation="nearest", extent=extent, cmap=cmap, vmin=-0.5, vmax=len(colors) - 0.5)


def phase_ribbon(
    target: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    relaxed_correct: np.ndarray | None = None,
    fps: float = 1.0,
    title: str = "",
) -> np.ndarray:
    """Ground truth / prediction / outcome rows over time (seconds); the outcome row marks the relaxed-correct
    frames (wrong frame by frame, forgiven at a phase boundary) in orange."""
    from matplotlib.patches import Patch

    target, pred = np.asarray(target), np.asarray(pred)
    k = len(class_names)
    fig = _figure(12, 2.4)
    ax = fig.add_subplot()
    end = len(target) / fps
    _cells(ax, np.stack([target, pred]), (0, end, 1, 3), class_colors(k))  # row 0 on top: ground truth
    outcome = (target == pred).astype(int)
    if relaxed_correct is not None:
        outcome[np.asarray(relaxed_correct, bool) & (outcome == 0)] = 2
    _cells(ax, outcome[None], (0, end, 0, 1), OUTCOME_COLORS)
    ax.set_ylim(0, 3)
    ax.set_yticks([0.5, 1.5, 2.5], ["outcome", "prediction", "ground truth"])
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    handles = [Patch(color=c, label=n) for c, n in zip(class_colors(k), class_names)]
    handles += [Patch(color=c, label=n) for c, n in zip(OUTCOME_COLORS, ("wrong", "correct", "relaxed-correct"))]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    return _to_array(fig)


def confusion_matrix(target: np.ndarray, pred: np.ndarray, class_names: Sequence[str], title: str = "") -> np.ndarray:
    """Row-normalised confusion matrix (each ground-truth class sums to 1; empty rows stay 0)."""
    import torch
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    k = len(class_names)
    cm = multiclass_confusion_matrix(
        torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(target)), k, normalize="true"
    ).numpy()
    size = max(4.0, 0.55 * k + 2)
    fig = _figure(size + 1, size)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _to_array(fig)


def ap_bars(ap: Mapping[str, float], title: str = "") -> np.ndarray:
    """Per-class AP (percent) as horizontal bars; classes without positives (NaN) are marked ``n/a``."""
    names, values = list(ap), np.asarray([float(v) for v in ap.values()])
    fig = _figure(8, max(2.5, 0.28 * len(names) + 1))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(values), color="#1f77b4")
    for yi, v in zip(y, values):
        ax.text(np.nan_to_num(v) + 1, yi, "n/a" if np.isnan(v) else f"{v:.1f}", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("AP (%)")
    ax.set_title(title)
    return _to_array(fig)
