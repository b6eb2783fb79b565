"""Per-step warm-up + cosine schedule against the reference's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from surgvista.modules.schedule import warmup_cosine


def test_released_recipe_values():
    sched = warmup_cosine(1.2e-3, 8e-4, total_steps=201 * 1734, warmup_steps=40 * 1734)
    assert len(sched) == 348_534
    assert sched[0] == 0.0
    assert sched[1] == pytest.approx(1.73e-8, rel=1e-2)
    assert sched[69_359] == pytest.approx(1.2e-3, rel=1e-12)  # end of warm-up: exactly base
    assert sched[69_360] == pytest.approx(1.2e-3, rel=1e-12)  # cosine starts at base
    assert sched[173_400] == pytest.approx(1.0779e-3, rel=1e-4)
    assert sched[346_799] == pytest.approx(8.00038e-4, rel=1e-5)
    assert sched[-1] > 8e-4 and sched[-1] == pytest.approx(8e-4, rel=1e-6)  # never quite final
    assert np.all(np.diff(sched[:69_360]) > 0) and np.all(np.diff(sched[69_360:]) < 0)


def test_edge_cases():
    assert warmup_cosine(1.0, 0.0, 5, 0)[0] == 1.0
    assert np.allclose(warmup_cosine(1.0, 0.0, 3, 10), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(1.0, 0.0, 0, 0)
