"""Clips to patch tokens and back: non-overlapping ``tubelet × patch × patch`` tubes in the embeddings' order."""

from __future__ import annotations

import torch

# Inside a token: (tubelet, row, column, channel) with the channel fastest, or the channel first (the layout of
# a Conv3d weight, ``(out, C, tubelet, patch, patch)``).
_CHANNELS_LAST = (0, 2, 4, 6, 3, 5, 7, 1)
_CHANNELS_FIRST = (0, 2, 4, 6, 1, 3, 5, 7)


def patchify(video: torch.Tensor, tubelet_size: int, patch_size: int, channels_first: bool = False) -> torch.Tensor:
    """Tokens ``(B, T'·H'·W', tubelet·patch·patch·C)`` of a clip ``(B, C, T, H, W)``, in t-major, row, column order.

    A token's pixels are laid out ``(tubelet patch patch C)`` with the channel fastest, or ``(C tubelet patch
    patch)`` with ``channels_first``. :func:`unpatchify` is the inverse.
    """
    b, c, t, h, w = video.shape
    k, p = tubelet_size, patch_size
    x = video.reshape(b, c, t // k, k, h // p, p, w // p, p)
    x = x.permute(*(_CHANNELS_FIRST if channels_first else _CHANNELS_LAST))
    return x.reshape(b, (t // k) * (h // p) * (w // p), -1)


def unpatchify(
    tokens: torch.Tensor,
    grid: tuple[int, int, int],
    tubelet_size: int,
    patch_size: int,
    channels_first: bool = False,
) -> torch.Tensor:
    """The clip ``(B, C, T'·tubelet, H'·patch, W'·patch)`` of tokens ``(B, T'·H'·W', tubelet·patch·patch·C)``
    laid out as :func:`patchify` writes them on the token ``grid`` ``(T', H', W')``."""
    (t, h, w), k, p = grid, tubelet_size, patch_size
    b = tokens.shape[0]
    if channels_first:
        x = tokens.reshape(b, t, h, w, -1, k, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
    else:
        x = tokens.reshape(b, t, h, w, k, p, p, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, -1, t * k, h * p, w * p)
