"""V-JEPA 2 3-D rotary position embedding (RoPE) over a ``(T', H', W')`` token grid.

A token's flat id (t-major, then row, then column, as :class:`~surgvista.layers.vit.TubeletEmbed` orders tokens)
gives its frame, row and column. The head dimension is cut into three parts of :func:`rope_part_dim` channels,
rotated by the frame, the row and the column position in that order; the channels left over stay as they are.
Within a part, channel pairs ``(x0, x1), (x2, x3), ...`` are rotated, and the angle of channel ``j`` of a part of
``d`` channels is ``pos · 10000^(-(j mod d/2) / (d/2))``: the first half of the frequencies repeated, as the
released V-JEPA 2 weights (and ``transformers``' ``rotate_queries_or_keys``) compute it.
"""

from __future__ import annotations

import torch

ROPE_THETA = 10000.0


def rope_part_dim(head_dim: int) -> int:
    """Channels rotated per axis (frame, row, column): the largest even number ``<= head_dim // 3``."""
    return 2 * ((head_dim // 3) // 2)


def rope_positions(ids: torch.Tensor, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame, row and column ``(t, h, w)`` of the flat token ids ``ids`` (any shape) on ``grid`` ``(T', H', W')``."""
    _, rows, cols = grid
    per_frame = rows * cols
    t = ids.div(per_frame, rounding_mode="floor")
    rest = ids - t * per_frame
    h = rest.div(cols, rounding_mode="floor")
    return t, h, rest - h * cols


def rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs of ``x (..., N, d)`` by the positions ``pos`` (broadcastable to ``(..., N)``)."""
    half = x.shape[-1] // 2
    omega = torch.arange(half, dtype=x.dtype, device=x.device) / half
    omega = 1.0 / ROPE_THETA**omega
    angles = pos.to(x.dtype).unsqueeze(-1) * omega  # (..., N, d/2)
    sin, cos = angles.sin(), angles.cos()
    sin, cos = torch.cat([sin, sin], dim=-1), torch.cat([cos, cos], dim=-1)
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # (-x1, x0, -x3, x2, ...)
    return x * cos + turned * sin


def apply_rope(x: torch.Tensor, ids: torch.Tensor | None, grid: tuple[int, int, int]) -> torch.Tensor:
    """3-D RoPE of queries or keys ``x (..., B, heads, N, head_dim)`` at the token ids ``ids`` (``(B, N)``,
    ``(N,)``, or ``None`` for ``arange(N)``) on ``grid``; computed in fp32, returned in ``x``'s dtype."""
    n, head_dim = x.shape[-2], x.shape[-1]
    if ids is None:
        ids = torch.arange(n, device=x.device)
    if ids.shape[-1] != n:
        raise ValueError(f"{ids.shape[-1]} token ids for {n} tokens")
    if ids.ndim == 2:
        ids = ids.unsqueeze(1)  # (B, 1, N): the same positions in every head
    part = rope_part_dim(head_dim)
    xf = x.float()
    pieces = [rotate(xf[..., i * part : (i + 1) * part], pos) for i, pos in enumerate(rope_positions(ids, grid))]
    pieces.append(xf[..., 3 * part :])
    return torch.cat(pieces, dim=-1).to(x.dtype)
