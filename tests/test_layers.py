"""The layers below every model: patchify and its inverse, the one choice of position table."""

from __future__ import annotations

import pytest
import torch

from surgvista.layers.patchify import patchify, unpatchify
from surgvista.layers.position import POS_EMBED_KINDS, check_pos_embed, position_table, sincos_3d, sinusoid_table


@pytest.mark.parametrize("channels_first", [False, True])
def test_unpatchify_inverts_patchify(channels_first):
    video = torch.randn(2, 3, 4, 16, 24)
    tokens = patchify(video, 2, 8, channels_first=channels_first)
    assert tokens.shape == (2, 2 * 2 * 3, 2 * 8 * 8 * 3)
    assert torch.equal(unpatchify(tokens, (2, 2, 3), 2, 8, channels_first=channels_first), video)


def test_patchify_token_order_and_pixel_layout():
    video = torch.arange(2 * 3 * 4 * 8 * 8, dtype=torch.float32).reshape(2, 3, 4, 8, 8)
    tokens = patchify(video, 2, 4)  # grid (2, 2, 2): t-major, then row, then column
    b, t, row, col = 1, 1, 0, 1
    token = tokens[b, t * 4 + row * 2 + col].view(2, 4, 4, 3)  # (tubelet, row, column, channel)
    tube = video[b, :, 2 * t : 2 * t + 2, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4]
    assert torch.equal(token, tube.permute(1, 2, 3, 0))
    first = patchify(video, 2, 4, channels_first=True)[b, t * 4 + row * 2 + col].view(3, 2, 4, 4)
    assert torch.equal(first, tube)


def test_position_table_is_the_one_choice_between_the_kinds():
    grid = (2, 3, 4)
    assert POS_EMBED_KINDS == ("sincos3d", "sinusoid1d", "learned", "rope")
    assert torch.equal(position_table("sincos3d", 32, grid), sincos_3d(32, grid))
    assert torch.equal(position_table("sinusoid1d", 32, grid), sinusoid_table(24, 32))
    learned = position_table("learned", 32, grid)
    assert learned.shape == (1, 24, 32) and not learned.any() and learned.dtype == torch.float32
    with pytest.raises(ValueError, match=r"unknown pos_embed 'rope'; expected one of \('sincos3d', 'sinusoid1d', "):
        position_table("rope", 32, grid)
    with pytest.raises(ValueError, match=r"expected one of \('sincos3d', 'sinusoid1d'\)$"):
        check_pos_embed("learned", learned=False)
