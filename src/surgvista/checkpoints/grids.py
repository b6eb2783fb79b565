"""Position tables ``(1, T'·H'·W', D)`` found in checkpoints: their token grid ``(T', H', W')`` (frames / tubelet,
height and width / patch), their kind (a fixed table is recognised by value) and resampling of a learned one."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from surgvista.checkpoints.errors import CheckpointError
from surgvista.layers.position import sincos_3d, sinusoid_table

Grid = tuple[int, int, int]  # (T', H', W')


def candidate_grids(num_tokens: int) -> list[Grid]:
    """Every ``(T', S, S)`` grid with square frames and ``T'·S·S = num_tokens``."""
    roots = ((t, math.isqrt(num_tokens // t)) for t in range(1, num_tokens + 1) if num_tokens % t == 0)
    return [(t, s, s) for t, s in roots if s * s * t == num_tokens]


def guess_grid(num_tokens: int, like: Grid | None = None) -> Grid | None:
    """The token grid of a ``num_tokens`` table: ``like``'s frame size or T' if they fit, else the only candidate."""
    if like and num_tokens % (like[1] * like[2]) == 0:
        return (num_tokens // (like[1] * like[2]), like[1], like[2])
    cands = candidate_grids(num_tokens)
    if not like:
        return cands[0] if len(cands) == 1 else None
    same_t = [g for g in cands if g[0] == like[0]]
    if same_t:
        return same_t[0]
    # neither axis kept: the grid with the closest T'/H' proportion
    return min(cands, key=lambda g: abs(math.log(g[0] / g[1]) - math.log(like[0] / like[1])), default=None)


def classify_table(table: torch.Tensor, grid: Grid | None = None) -> str:
    """``sincos3d`` (``grid`` tried first, then every square-frame grid) / ``sinusoid1d`` when ``table`` is that
    fixed table (to 1e-4), else ``learned``."""
    return classify_table_grid(table, grid)[0]


def classify_table_grid(table: torch.Tensor, grid: Grid | None = None) -> tuple[str, Grid | None]:
    """As :func:`classify_table`, also returning the grid a ``sincos3d`` table was matched on."""
    n, dim = table.shape[-2:]
    t = table.detach().float().reshape(n, dim).cpu()
    if torch.allclose(t, sinusoid_table(n, dim)[0], atol=1e-4):
        return "sinusoid1d", grid
    if dim % 16 == 0:
        for g in ([grid] if grid else []) + candidate_grids(n):
            if g[0] * g[1] * g[2] == n and torch.allclose(t, sincos_3d(dim, g)[0], atol=1e-4):
                return "sincos3d", g
    return "learned", grid


def interpolate_pos_embed(table: torch.Tensor, src_grid: Grid, dst_grid: Grid):
    """Resize a learned ``(1, T·H·W, D)`` table: bicubic over (H, W) per frame, then linear over T."""
    t0, h0, w0 = src_grid
    t1, h1, w1 = dst_grid
    dim = table.shape[-1]
    if table.shape[-2] != t0 * h0 * w0:
        raise CheckpointError(f"pos_embed has {table.shape[-2]} tokens, not the {t0}x{h0}x{w0} grid given")
    from timm.layers import resample_abs_pos_embed

    x = table.detach().float().reshape(t0, h0 * w0, dim)
    if (h0, w0) != (h1, w1):  # timm's resampler per frame; no antialiasing, as the reference's F.interpolate
        frames = [resample_abs_pos_embed(f[None], [h1, w1], [h0, w0], num_prefix_tokens=0, antialias=False) for f in x]
        x = torch.cat(frames)
    x = x.reshape(t0, h1, w1, dim).permute(3, 1, 2, 0).reshape(1, dim * h1 * w1, t0)  # (1, D·H·W, T)
    if t0 != t1:
        x = F.interpolate(x, size=t1, mode="linear", align_corners=False)
    return x.reshape(dim, h1, w1, t1).permute(3, 1, 2, 0).reshape(1, t1 * h1 * w1, dim).to(table.dtype)
