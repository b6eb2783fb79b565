"""Per-optimiser-step learning-rate schedule of the reference (spec pretrain §7.3)."""

from __future__ import annotations

import numpy as np


def warmup_cosine(base: float, final: float, total_steps: int, warmup_steps: int, start: float = 0.0) -> np.ndarray:
    """``linspace(start, base, warmup_steps)`` then ``final + ½(base−final)(1+cos(π i/L))`` for ``i < L``.

    Both warm-up endpoints are included, so step 0 is ``start`` and step ``warmup_steps−1`` is ``base``;
    the cosine never quite reaches ``final``. Length ``total_steps``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    warmup = np.linspace(start, base, warmup_steps)
    iters = np.arange(total_steps - warmup_steps)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    return np.concatenate([warmup, cosine])
