"""Tube and random masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from surgvista.layers.masking import MaskGenerator


def test_tube_085_on_8x14x14():
    mask = MaskGenerator("tube", 0.85)(4, (8, 14, 14), generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (4, 1568)
    assert mask.sum(1).tolist() == [1328] * 4 and (~mask).sum(1).tolist() == [240] * 4
    slices = mask.view(4, 8, 196)
    assert torch.equal(slices, slices[:, :1].expand_as(slices))  # same positions at every time slice
    assert slices[:, 0].sum(1).tolist() == [166] * 4
    assert not torch.equal(mask[0], mask[1])  # drawn per sample


@pytest.mark.parametrize(("ratio", "per_slice"), [(0.75, 147), (0.9, 176), (0.85, 166)])
def test_tube_counts_truncate(ratio, per_slice):
    assert MaskGenerator("tube", ratio).num_masked((8, 14, 14)) == 8 * per_slice


def test_random_mask_fixed_count_not_tubes():
    mask = MaskGenerator("random", 0.85)(3, (8, 14, 14), generator=torch.Generator().manual_seed(1))
    assert mask.sum(1).tolist() == [1332] * 3
    slices = mask.view(3, 8, 196)
    assert not torch.equal(slices[:, 0], slices[:, 1])


def test_generator_makes_masks_reproducible_and_bad_args_fail():
    gen = MaskGenerator("tube", 0.5)
    a = gen(2, (2, 4, 4), generator=torch.Generator().manual_seed(3))
    b = gen(2, (2, 4, 4), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="mask kind"):
        MaskGenerator("block")
    with pytest.raises(ValueError, match="ratio"):
        MaskGenerator("tube", 1.0)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["tube", "random"]),
    ratio=st.floats(0.0, 0.99),
    batch=st.integers(1, 4),
    t=st.integers(1, 4),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
)
def test_mask_count_is_fixed_per_sample(kind, ratio, batch, t, h, w):
    gen = MaskGenerator(kind, ratio)
    mask = gen(batch, (t, h, w))
    assert mask.shape == (batch, t * h * w)
    assert mask.sum(1).tolist() == [gen.num_masked((t, h, w))] * batch


# ------------------------------------------------------------------ token selection without boolean indexing
@pytest.mark.parametrize("kind", ["tube", "random"])
def test_token_order_and_take_equal_boolean_indexing_values_and_gradients(kind):
    from surgvista.layers.masking import take, token_order

    gen = MaskGenerator(kind, 0.75)
    grid = (2, 4, 4)
    mask = gen(3, grid, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 32, 5, requires_grad=True)
    visible, masked = token_order(mask, gen.num_masked(grid))
    assert torch.equal(take(x, visible), x[~mask].reshape(3, -1, 5))
    assert torch.equal(take(x, masked), x[mask].reshape(3, -1, 5))
    assert [torch.equal(a, b) for a, b in zip(token_order(mask), (visible, masked))] == [True, True]  # count read
    weights = torch.randn(3, 32 - gen.num_masked(grid), 5)
    (ours,) = torch.autograd.grad((take(x, visible) * weights).sum(), x)
    (ref,) = torch.autograd.grad((x[~mask].reshape(3, -1, 5) * weights).sum(), x)
    assert torch.equal(ours, ref)
    pos = torch.randn(1, 32, 5)  # one table for the whole batch (positional embeddings)
    assert torch.equal(take(pos, masked), pos.expand(3, -1, -1)[mask].reshape(3, -1, 5))


def test_token_order_refuses_rows_with_different_counts():
    from surgvista.layers.masking import token_order

    with pytest.raises(ValueError, match=r"same number of tokens, got \[1, 2\]"):
        token_order(torch.tensor([[True, False, False], [True, True, False]]))
