"""V-JEPA 2 3-D rotary position embedding (RoPE) over a ``(T', H', W')`` token grid.

A token's flat id (t-major, then row, then column, as :class:`~surgvista.layers.vit.TubeletEmbed` orders tokens)
gives its frame, row and column. The head dimension is cut into three parts of :func:`rope_part_dim` channels,
rotated by the frame, the row and the column position in that order; the channels left over stay as they are.
Within a part, channel pairs ``(x0, x1), (x2, x3), ...`` are rotated, and the angle of channel ``j`` of a part of
``d`` channels is ``pos · 10000^(-(j mod d/2) / (d/2))``: the first half of the frequencies repeated, as the
released V-JEPA 2 weights (and ``transformers``' ``rotate_queries_or_keys``) compute it.

V-JEPA 2.1 (``variant="vjepa21"``) differs in two ways, both without parameters: the pair ``(x_{2i}, x_{2i+1})``
turns by the angle of frequency ``i`` (each frequency repeated twice in a row, ordinary RoPE), and rows and columns
are stretched onto the ``ref_side``-token grid it was trained on (position ``h · (ref_side - 1) / (H' - 1)``;
frames are not stretched). See :func:`rope_ref_side` for ``ref_side``.
"""

from __future__ import annotations

import torch

ROPE_THETA = 10000.0
ROPE_VARIANTS = ("vjepa2", "vjepa21")


def check_rope_variant(variant: str) -> str:
    """``variant`` if it is one of :data:`ROPE_VARIANTS`, else a one-line ``ValueError``."""
    if variant not in ROPE_VARIANTS:
        raise ValueError(f"unknown rope_variant {variant!r}; expected one of {ROPE_VARIANTS}")
    return variant


def rope_ref_side(patch_size: int) -> int:
    """V-JEPA 2.1's reference grid side for its stretched rows and columns: 252 px / 14 or 256 px / ``patch_size``."""
    return 252 // patch_size if patch_size == 14 else 256 // patch_size


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


def stretch(pos: torch.Tensor, side: int, ref_side: int) -> torch.Tensor:
    """Rows or columns ``0..side-1`` spread over ``0..ref_side-1`` (V-JEPA 2.1); a side of 1 stays at 0."""
    if side <= 1:
        return pos.float()
    return pos.float() * (ref_side - 1) / (side - 1)


def rotate(x: torch.Tensor, pos: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the channel pairs of ``x (..., N, d)`` by the positions ``pos`` (broadcastable to ``(..., N)``);
    ``interleaved``: pair ``i`` uses frequency ``i`` (V-JEPA 2.1), else channel ``j`` uses ``j mod d/2``."""
    half = x.shape[-1] // 2
    omega = torch.arange(half, dtype=x.dtype, device=x.device) / half
    omega = 1.0 / ROPE_THETA**omega
    angles = pos.to(x.dtype).unsqueeze(-1) * omega  # (..., N, d/2)
    sin, cos = angles.sin(), angles.cos()
    if interleaved:
        sin, cos = sin.repeat_interleave(2, dim=-1), cos.repeat_interleave(2, dim=-1)
    else:
        sin, cos = torch.cat([sin, sin], dim=-1), torch.cat([cos, cos], dim=-1)
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # (-x1, x0, -x3, x2, ...)
    return x * cos + turned * sin


def apply_rope(
    x: torch.Tensor,
    ids: torch.Tensor | None,
    grid: tuple[int, int, int],
    variant: str = "vjepa2",
    ref_side: int = 16,
) -> torch.Tensor:
    """3-D RoPE of queries or keys ``x (..., B, heads, N, head_dim)`` at the token ids ``ids`` (``(B, N)``,
    ``(N,)``, or ``None`` for ``arange(N)``) on ``grid``; computed in fp32, returned in ``x``'s dtype.
    ``variant="vjepa21"``: interleaved frequencies, rows and columns stretched onto ``ref_side`` (module docstring)."""
    n, head_dim = x.shape[-2], x.shape[-1]
    if ids is None:
        ids = torch.arange(n, device=x.device)
    if ids.shape[-1] != n:
        raise ValueError(f"{ids.shape[-1]} token ids for {n} tokens")
    if ids.ndim == 2:
        ids = ids.unsqueeze(1)  # (B, 1, N): the same positions in every head
    part = rope_part_dim(head_dim)
    xf = x.float()
    positions = list(rope_positions(ids, grid))
    interleaved = check_rope_variant(variant) == "vjepa21"
    if interleaved:
        positions[1:] = [stretch(positions[1], grid[1], ref_side), stretch(positions[2], grid[2], ref_side)]
    pieces = [rotate(xf[..., i * part : (i + 1) * part], pos, interleaved) for i, pos in enumerate(positions)]
    pieces.append(xf[..., 3 * part :])
    return torch.cat(pieces, dim=-1).to(x.dtype)
