"""Means and standard deviations with MATLAB semantics, independent of the order of the values.

Sums use ``math.fsum`` (exactly rounded), so permuting videos or classes never changes a result, not even in
the last bit. ``std``/``nanstd`` are the sample standard deviation (N-1, MATLAB's default), and, as in MATLAB,
the standard deviation of a single value is 0 (numpy with ``ddof=1`` would give NaN).
"""

from __future__ import annotations

import math

import numpy as np


def _values(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).ravel()


def mean(values) -> float:
    """Plain mean: NaN if any value is NaN or if there are no values (MATLAB ``mean``)."""
    x = _values(values)
    if x.size == 0 or np.isnan(x).any():
        return math.nan
    return math.fsum(x.tolist()) / x.size


def nanmean(values) -> float:
    """Mean of the non-NaN values; NaN if there are none (MATLAB ``nanmean``)."""
    x = _values(values)
    return mean(x[~np.isnan(x)])


def std(values) -> float:
    """Sample standard deviation (N-1); 0 for one value; NaN if any value is NaN (MATLAB ``std``)."""
    x = _values(values)
    m = mean(x)
    if math.isnan(m):
        return m
    if x.size == 1:
        return 0.0
    return math.sqrt(math.fsum(((x - m) ** 2).tolist()) / (x.size - 1))


def nanstd(values) -> float:
    """``std`` of the non-NaN values; NaN if there are none (MATLAB ``nanstd``)."""
    x = _values(values)
    return std(x[~np.isnan(x)])


def nanmean_rows(matrix: np.ndarray) -> np.ndarray:
    """``nanmean`` of every row of a 2-D array."""
    return np.array([nanmean(row) for row in np.asarray(matrix, dtype=np.float64)])
