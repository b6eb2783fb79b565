"""V-JEPA multi-block 3-D masks: block geometry, complement, truncation, reproducibility, bad specs."""

from __future__ import annotations

import math

import pytest
import torch

from surgvista.layers.multiblock import VJEPA2_MASKS, BlockSpec, MultiBlockMasks, block_size


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_block_size_follows_one_uniform_draw():
    spec = BlockSpec(1, (0.2, 0.4), (0.5, 1.0), (1.0, 2.0))
    u = float(torch.rand(1, generator=gen(3)))
    keep = int(16 * 16 * (0.2 + 0.2 * u))
    ratio = 1.0 + u
    expected = (max(1, int(8 * (0.5 + 0.5 * u))), round(math.sqrt(keep * ratio)), round(math.sqrt(keep / ratio)))
    assert block_size(spec, (8, 16, 16), gen(3)) == expected


def test_masks_are_box_unions_full_in_time_and_complementary():
    grid = (8, 16, 16)
    sets = MultiBlockMasks(VJEPA2_MASKS)(4, grid, gen(1))
    assert len(sets) == 2
    for context, target in sets:
        assert context.shape[0] == target.shape[0] == 4
        for c, t in zip(context, target):
            assert torch.equal(c, c.sort().values) and torch.equal(t, t.sort().values)
            assert not set(c.tolist()) & set(t.tolist())  # context and targets never overlap
            hidden = torch.zeros(math.prod(grid), dtype=torch.bool)
            hidden[t] = True
            # temporal_scale 1: a hidden position is hidden at every time step (before truncation of the tail)
            per_frame = hidden.view(grid).flatten(1)
            assert torch.equal(per_frame[0], per_frame[1])
    small, large = sets
    assert large.context.shape[1] < small.context.shape[1]  # 2 blocks at 0.7 hide more than 8 at 0.15


def test_counts_cut_to_the_batch_minimum_as_the_official_collator():
    masks = MultiBlockMasks([BlockSpec(3, (0.1, 0.3))])
    (context, target), = masks(16, (2, 10, 10), gen(5))
    # every sample keeps the smallest count of the batch; what is kept is a prefix of its ascending ids
    assert context.shape[1] + target.shape[1] <= 200
    assert context.shape[1] >= 1 and target.shape[1] >= 1


def test_same_generator_state_same_masks():
    masks = MultiBlockMasks()
    a = masks(3, (4, 8, 8), gen(7))
    b = masks(3, (4, 8, 8), gen(7))
    for x, y in zip(a, b):
        assert torch.equal(x.context, y.context) and torch.equal(x.target, y.target)
    c = masks(3, (4, 8, 8), gen(8))
    assert not all(torch.equal(x.target, y.target) for x, y in zip(a, c))


def test_hydra_style_specs_and_bad_specs():
    masks = MultiBlockMasks([{"num_blocks": 2, "spatial_scale": [0.3, 0.3], "aspect_ratio": [1, 1]}])
    assert masks.specs[0] == BlockSpec(2, (0.3, 0.3), (1.0, 1.0), (1, 1))
    with pytest.raises(ValueError, match="num_blocks"):
        MultiBlockMasks([BlockSpec(0)])
    with pytest.raises(ValueError, match="at least one"):
        MultiBlockMasks([])
    with pytest.raises(ValueError, match="no context"):
        MultiBlockMasks([BlockSpec(1, (1.0, 1.0))], max_tries=3)(2, (2, 4, 4), gen(0))
