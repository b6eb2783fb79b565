"""Triplet mAP equals ivtmetrics 0.1.5 (``Recognition.compute_video_AP``, challenge null handling).

``ivtmetrics`` and scikit-learn are test-only dependencies; the library never imports them. ivtmetrics turns the
``-0.0`` AP that scikit-learn 1.1-1.5 returns for a class without positives into NaN; scikit-learn >= 1.6 returns
``+0.0`` instead, which ivtmetrics would average in as 0, so the reference needs scikit-learn < 1.6 (SurgVISTA
pins 1.5.1).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as sklearn_metrics
import torch
from ivtmetrics import recognition as ivt_recognition

from surgvista.data.vocab import CHOLECT50_TRIPLETS
from surgvista.metrics import CHOLECT50, COMPONENTS, TripletMetrics, average_precision, triplet_scores, video_ap


def _reference_sklearn_ok() -> None:
    ap = sklearn_metrics.average_precision_score(
        np.array([[0, 1], [0, 0]]), np.array([[0.2, 0.3], [0.5, 0.5]]), average=None
    )
    assert str(ap[0]) == "-0.0", (
        "the ivtmetrics reference needs scikit-learn < 1.6 (absent class -> -0.0 -> NaN); "
        f"installed scikit-learn returns {ap[0]!r}"
    )


def random_set(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    targets, probs = [], []
    for _ in range(1 + seed % 3):  # 1-3 videos of 3-14 frames
        n = int(rng.integers(3, 15))
        t = (rng.random((n, 100)) < rng.uniform(0.01, 0.15)).astype(np.int64)
        p = rng.random((n, 100))
        if seed % 2:  # ties: coarse probabilities
            p = np.round(p, 1)
        p = np.where(t == 1, np.minimum(p + rng.uniform(0, 0.5), 1.0), p).astype(np.float32)
        targets.append(t)
        probs.append(p)
    return targets, probs


def reference(targets, probs) -> dict[str, tuple[np.ndarray, float]]:
    rec = ivt_recognition.Recognition(num_class=100)
    for t, p in zip(targets, probs):
        rec.update(t, p.astype(np.float64))
        rec.video_end()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            c: (np.asarray(r["AP"]), r["mAP"]) for c in COMPONENTS for r in [rec.compute_video_AP(c, ignore_null=True)]
        }


def test_component_map_equals_ivtmetrics():
    bank = np.asarray(ivt_recognition.Recognition(num_class=100).bank)
    ours = np.stack([CHOLECT50.column(c) for c in ("ivt", "i", "v", "t", "iv", "it")], axis=1)
    assert np.array_equal(bank[:, :6], ours)
    assert [len(CHOLECT50.classes(c)) for c in COMPONENTS] == [6, 10, 15, 26, 59, 100]
    assert CHOLECT50.class_names("ivt")[94] == "grasper,null_verb,null_target"
    assert CHOLECT50.class_names("iv")[0] == "grasper,grasp"
    assert CHOLECT50.class_names("ivt") == list(CHOLECT50_TRIPLETS)  # the metric and the adapter share one vocabulary


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.filterwarnings("ignore:No positive class found")
def test_video_map_equals_ivtmetrics(seed):
    _reference_sklearn_ok()
    targets, probs = random_set(seed)
    ref = reference(targets, probs)
    scores = triplet_scores(targets, probs)
    for c in COMPONENTS:
        ref_ap, ref_map = ref[c]
        _, ap, m = video_ap(targets, probs, c)
        ap = ap[:-6] if c == "ivt" else ap  # ivtmetrics drops the null triplets from its AP vector
        assert ap.shape == ref_ap.shape
        assert np.allclose(ap / 100, ref_ap, rtol=0, atol=1e-9, equal_nan=True), c
        assert math.isclose(m / 100, ref_map, abs_tol=1e-9) or (math.isnan(m) and math.isnan(ref_map))
        assert scores[f"mAP_{c}"] == m


def test_average_precision_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        y[0] = 1
        s = np.round(rng.random(30), 1)
        assert math.isclose(average_precision(y, s), sklearn_metrics.average_precision_score(y, s), abs_tol=1e-12)
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_triplet_metric_class_and_errors():
    targets, probs = random_set(1)
    m = TripletMetrics()
    for v, (t, p) in enumerate(zip(targets, probs)):
        n = len(t)
        m.update(torch.from_numpy(p), torch.from_numpy(t), torch.full((n,), v), torch.arange(n))
        m.update(torch.from_numpy(p[:2]), torch.from_numpy(t[:2]), torch.full((2,), v), torch.arange(2))  # padding
    assert m.compute() == triplet_scores(targets, probs)
    per_class = m.per_class_ap("i")
    assert list(per_class) == list(CHOLECT50.instruments)
    with pytest.raises(ValueError, match="num_classes=89 but the component map has 100 triplets"):
        TripletMetrics(num_classes=89)
    no_map = TripletMetrics(num_classes=89, component_map=None)
    no_map.update(torch.rand(3, 89), torch.randint(0, 2, (3, 89)), torch.zeros(3, dtype=torch.long), torch.arange(3))
    assert set(no_map.compute()) == {"mAP_ivt"}
    with pytest.raises(ValueError, match=r"target must be multi-hot of shape \(4, 100\)"):
        m.update(torch.rand(4, 100), torch.zeros(4, 99), torch.zeros(4, dtype=torch.long), torch.arange(4))
    with pytest.raises(ValueError, match=r"probs must be a float tensor of shape \[B, 100\]"):
        m.update(torch.rand(4, 94), torch.zeros(4, 94), torch.zeros(4, dtype=torch.long), torch.arange(4))
    bad = TripletMetrics()
    bad.update(torch.rand(1, 100), torch.zeros(1, 100), torch.tensor([0]), torch.tensor([5]))
    bad.update(torch.rand(1, 100), torch.ones(1, 100), torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="conflicting targets for the same sample"):
        bad.compute()
