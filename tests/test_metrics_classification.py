"""Clip/frame classification metrics against scikit-learn and torchmetrics, and the Markdown table helper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as sklearn_metrics
import torch
from torchmetrics.functional.classification import multiclass_accuracy

from surgvista.metrics import (
    ClipMetrics,
    balanced_accuracy,
    clip_scores,
    metrics_table,
    multilabel_balanced_accuracy,
    per_class_ap,
    topk_accuracy,
)


def data(seed=0, n=60, c=6):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, c - 1, n)  # class c-1 never occurs
    probs = rng.random((n, c))
    probs[np.arange(n), target] += rng.random(n)
    return probs / probs.sum(1, keepdims=True), target


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_single_label_against_references():
    probs, target = data()
    for k in (1, 3):
        ref = (
            multiclass_accuracy(
                torch.from_numpy(probs), torch.from_numpy(target), num_classes=6, top_k=k, average="micro"
            ).item()
            * 100
        )
        assert math.isclose(topk_accuracy(probs, target, k), ref, abs_tol=1e-4)
    assert math.isclose(
        balanced_accuracy(probs, target),
        sklearn_metrics.balanced_accuracy_score(target, probs.argmax(1)) * 100,
        abs_tol=1e-9,
    )
    ap = per_class_ap(probs, target)
    for c in range(5):
        assert math.isclose(
            ap[c], sklearn_metrics.average_precision_score(target == c, probs[:, c]) * 100, abs_tol=1e-9
        )
    assert math.isnan(ap[5])  # no positive clip
    r = clip_scores(probs, target, top_k=(1, 5, 10))
    assert set(r) == {"accuracy", "accuracy_top5", "balanced_accuracy", "mAP"}  # k=10 > 6 classes: skipped
    assert math.isclose(r["mAP"], np.mean(ap[:5]), abs_tol=1e-9)
    # SurgVISTA clip-runner convention: absent classes count as AP 0
    assert math.isclose(clip_scores(probs, target, absent="zero")["mAP"], np.sum(ap[:5]) / 6, abs_tol=1e-9)


def test_multilabel():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 2, (40, 3))
    probs = np.clip(target * 0.4 + rng.random((40, 3)) * 0.6, 0, 1)
    bal = multilabel_balanced_accuracy(probs, target)
    for c in range(3):
        ref = sklearn_metrics.balanced_accuracy_score(target[:, c], probs[:, c] >= 0.5) * 100
        assert math.isclose(bal[c], ref, abs_tol=1e-9)
    r = clip_scores(probs, target, multilabel=True, top_k=(), per_class=True, class_names=["C1", "C2", "C3"])
    assert set(r) >= {"balanced_accuracy", "mAP", "ap/C1", "balanced_accuracy/C3"} and "accuracy" not in r


def test_clip_metric_class_dedup_and_errors():
    probs, target = data(2, n=20)
    m = ClipMetrics(6)
    idx = np.arange(20)
    m.update(torch.from_numpy(probs).float(), torch.from_numpy(target), torch.from_numpy(idx))
    m.update(torch.from_numpy(probs[:3]).float(), torch.from_numpy(target[:3]), torch.from_numpy(idx[:3]))  # pad
    r = m.compute()
    ref = clip_scores(probs.astype(np.float32), target)
    assert r.keys() == ref.keys() and all(math.isclose(r[k], ref[k], abs_tol=1e-9) for k in r)
    no_index = ClipMetrics(6)
    no_index.update(torch.from_numpy(probs).float(), torch.from_numpy(target))
    assert math.isclose(no_index.compute()["accuracy"], ref["accuracy"])
    with pytest.raises(ValueError, match="top-k accuracy is undefined for multi-label"):
        ClipMetrics(3, top_k=(1,), multilabel=True)
    with pytest.raises(ValueError, match=r"probs must be a float tensor of shape \[B, 6\]"):
        m.update(torch.rand(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\]"):
        m.update(torch.rand(2, 6), torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"multi-label target must have shape \(2, 3\)"):
        ClipMetrics(3, multilabel=True).update(torch.rand(2, 3), torch.tensor([0, 1]))


def test_metrics_table():
    flat = {
        "accuracy": 90.0,
        "video_accuracy_mean": 88.5,
        "video_accuracy_std": 4.25,
        "jaccard": math.nan,
        "jaccard_std": math.nan,
        "edit": 70.0,
    }
    text = metrics_table(flat, title="Cholec80")
    assert text.splitlines()[:4] == ["**Cholec80**", "", "| metric | value |", "|---|---:|"]
    assert "| video_accuracy | 88.50 ± 4.25 |" in text and "| jaccard | n/a ± n/a |" in text
    nested = {"run a": {"accuracy": 1.0, "f1": 2.0, "f1_std": 0.5}, "run b": {"accuracy": 3.0}}
    lines = metrics_table(nested, digits=1).splitlines()
    assert (
        lines[0] == "| | accuracy | f1 |"
        and lines[2] == "| run a | 1.0 | 2.0 ± 0.5 |"
        and lines[3] == "| run b | 3.0 |  |"
    )
    with pytest.raises(ValueError, match="empty results"):
        metrics_table({})


def test_library_does_not_import_test_references():
    import ast
    from pathlib import Path

    import surgvista.metrics

    for path in Path(surgvista.metrics.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in {"sklearn", "ivtmetrics", "scipy"} for n in names), (path, names)
