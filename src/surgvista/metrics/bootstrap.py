"""Seeded bootstrap over videos: percentile confidence intervals and paired comparisons of two runs.

The unit of resampling is the video (a test set's videos are the independent samples; frames of one video are
not). ``metric`` maps any list of per-video records to ``{name: value}`` and is the same function that gives the
headline number on the full list (``surgvista.metrics.per_video``), so each resample is scored exactly as the
test set is.

* Resamples: ``numpy.random.default_rng(seed).integers(0, n, size=(resamples, n))``; row ``r`` lists the videos
  of resample ``r`` (drawn with replacement). Defaults: 1000 resamples, seed 0, level 0.95.
* Interval: the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles (numpy's linear interpolation) of the
  resampled values. Resamples where a metric is NaN (e.g. a plain mean over phases when no drawn video shows one
  phase) are left out of that metric's percentiles; all NaN gives a NaN interval.
* Seeds and videos (``seeds_videos_interval``, the objectives' ablation): a ``(seeds, videos)`` matrix, its rows
  (runs of one recipe with different seeds) and columns (test videos) resampled independently; its mean.
* Paired difference of runs A and B on the same videos: both are resampled with the same rows,
  ``d_r = m(A_r) - m(B_r)``; reported are the observed ``m(A) - m(B)``, the percentile interval of ``d_r`` and the
  two-sided p-value ``p = min(1, 2 * min(1 + #{d_r <= 0}, 1 + #{d_r >= 0}) / (R + 1))`` over the ``R`` resamples
  with a finite ``d_r`` (the +1 counts the observed set itself, so ``p >= 2 / (R + 1)``; identical runs give 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95

Metric = Callable[[Sequence], Mapping[str, float]]


@dataclass(frozen=True)
class Interval:
    """A metric on the whole test set and its bootstrap percentile interval (percent, like the metric)."""

    value: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float | None]:
        return {k: (None if math.isnan(v) else v) for k, v in (("value", self.value), ("lo", self.lo), ("hi", self.hi))}

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.lo:.2f}, {self.hi:.2f}]"


@dataclass(frozen=True)
class Difference:
    """``m(A) - m(B)``, the percentile interval of the paired resampled differences and the two-sided p-value."""

    diff: float
    lo: float
    hi: float
    p: float

    def as_dict(self) -> dict[str, float | None]:
        items = (("diff", self.diff), ("lo", self.lo), ("hi", self.hi), ("p", self.p))
        return {k: (None if math.isnan(v) else v) for k, v in items}


def resample_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``(resamples, n)`` video indices drawn with replacement from ``default_rng(seed)``."""
    if n < 1:
        raise ValueError("bootstrap: no videos to resample")
    if resamples < 1:
        raise ValueError(f"bootstrap: resamples must be >= 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def resampled_values(units: Sequence, metric: Metric, indices: np.ndarray, keys: Sequence[str]) -> np.ndarray:
    """``(len(keys), resamples)`` values of ``metric`` on every resample (row of ``indices``)."""
    out = np.full((len(keys), len(indices)), np.nan)
    for r, row in enumerate(indices):
        scores = metric([units[i] for i in row])
        out[:, r] = [scores.get(k, math.nan) for k in keys]
    return out


def percentile_interval(values, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of the finite ``values`` (NaN, NaN if there are none)."""
    if not 0 < level < 1:
        raise ValueError(f"bootstrap: level must lie in (0, 1), got {level}")
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(x, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def _keys(point: Mapping[str, float], keys: Sequence[str] | None) -> list[str]:
    return [k for k in (keys if keys is not None else point) if k in point]


def bootstrap_ci(
    units: Sequence,
    metric: Metric,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
    keys: Sequence[str] | None = None,
) -> dict[str, Interval]:
    """``{name: Interval}`` of every metric (``keys``: a selection) over ``resamples`` video resamples."""
    point = metric(list(units))
    names = _keys(point, keys)
    values = resampled_values(units, metric, resample_indices(len(units), resamples, seed), names)
    return {k: Interval(float(point[k]), *percentile_interval(v, level)) for k, v in zip(names, values)}


def p_value(diffs) -> float:
    """Two-sided bootstrap p-value of resampled differences (module docstring); NaN without finite ones."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    below, above = np.count_nonzero(d <= 0), np.count_nonzero(d >= 0)
    return min(1.0, 2 * min(1 + below, 1 + above) / (d.size + 1))


def paired_bootstrap(
    units_a: Sequence,
    units_b: Sequence,
    metric: Metric,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
    keys: Sequence[str] | None = None,
) -> dict[str, Difference]:
    """``{name: Difference}`` of run A minus run B; ``units_a[i]`` and ``units_b[i]`` must be the same video."""
    if len(units_a) != len(units_b):
        raise ValueError(f"paired bootstrap: {len(units_a)} videos in run A but {len(units_b)} in run B")
    point_a, point_b = metric(list(units_a)), metric(list(units_b))
    names = [k for k in _keys(point_a, keys) if k in point_b]
    indices = resample_indices(len(units_a), resamples, seed)
    diffs = resampled_values(units_a, metric, indices, names) - resampled_values(units_b, metric, indices, names)
    return {
        k: Difference(float(point_a[k]) - float(point_b[k]), *percentile_interval(d, level), p_value(d))
        for k, d in zip(names, diffs)
    }


def seeds_videos_interval(
    values, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL
) -> Interval:
    """Mean of a ``(seeds, videos)`` matrix of per-video values and its interval when both the seeds (runs) and the
    test videos are resampled: resample ``r`` takes the rows of ``seeds_r`` and the columns of ``videos_r``, each
    drawn with replacement (two independent draws from one ``default_rng(seed)``), and averages that block."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"bootstrap: expected a non-empty (seeds, videos) matrix, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, x.shape[0], size=(resamples, x.shape[0]))
    cols = rng.integers(0, x.shape[1], size=(resamples, x.shape[1]))
    means = np.array([x[np.ix_(r, c)].mean() for r, c in zip(rows, cols)])
    return Interval(float(x.mean()), *percentile_interval(means, level))
