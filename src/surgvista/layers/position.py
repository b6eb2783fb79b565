"""Position tables: the fixed 3-D sin-cos and 1-D sinusoid tables, and the one choice between the kinds."""

from __future__ import annotations

import numpy as np
import torch

POS_EMBED_KINDS = ("sincos3d", "sinusoid1d", "learned", "rope")
"""``sincos3d``: SurgVISTA/MVD 3-D table; ``sinusoid1d``: VideoMAE/UMT/HF 1-D table; ``learned``: a parameter;
``rope``: no table, V-JEPA 2's 3-D rotary embedding inside attention (:mod:`surgvista.layers.rope`)."""


def check_pos_embed(kind: str, learned: bool = True, rope: bool = False) -> str:
    """Validate a ``pos_embed`` kind (``learned=False``: no learned table; ``rope=True``: RoPE allowed); return it."""
    kinds = tuple(k for k in POS_EMBED_KINDS if (learned or k != "learned") and (rope or k != "rope"))
    if kind not in kinds:
        raise ValueError(f"unknown pos_embed {kind!r}; expected one of {kinds}")
    return kind


def position_table(kind: str, dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """The ``(1, T·H·W, dim)`` table of ``kind`` for the token ``grid`` ``(T, H, W)``.

    ``sincos3d`` is :func:`sincos_3d`, ``sinusoid1d`` is :func:`sinusoid_table` over the flat token index and
    ``learned`` is zeros (its model initialises it); ``rope`` has no table (an error).
    """
    check_pos_embed(kind)
    if kind == "sincos3d":
        return sincos_3d(dim, grid)
    num_positions = grid[0] * grid[1] * grid[2]
    if kind == "sinusoid1d":
        return sinusoid_table(num_positions, dim)
    return torch.zeros(1, num_positions, dim)


def sincos_1d(positions: np.ndarray, dim: int) -> np.ndarray:
    """``[sin(p * w_k) | cos(p * w_k)]`` with ``w_k = 10000^(-k / (dim/2))``; shape ``(len(positions), dim)``."""
    if dim % 2:
        raise ValueError(f"sin-cos dimension must be even, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """SurgVISTA/MVD 3-D table ``(1, T*H*W, dim)`` in t-major token order.

    Channels are ``[temporal (dim/4) | column w (3dim/8) | row h (3dim/8)]``: the reference's
    ``meshgrid(w, h)`` makes the first spatial half encode the column index.
    """
    if dim % 16:
        raise ValueError(f"3-D sin-cos position table needs a width divisible by 16, got {dim}")
    t_size, h_size, w_size = grid
    dim_t, dim_s = dim // 4, 3 * dim // 8
    t, h, w = np.meshgrid(np.arange(t_size), np.arange(h_size), np.arange(w_size), indexing="ij")
    table = np.concatenate(
        [sincos_1d(t.ravel(), dim_t), sincos_1d(w.ravel(), dim_s), sincos_1d(h.ravel(), dim_s)], axis=1
    )
    return torch.from_numpy(table.astype(np.float32))[None]


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE/UMT 1-D table ``(1, N, dim)`` over the flat token index.

    ``angle(p, j) = p / 10000^(2⌊j/2⌋/dim)``; sin on even channels, cos on odd ones (interleaved, unlike
    :func:`sincos_1d`).
    """
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angles = pos / np.power(10000.0, 2 * (j // 2) / dim)
    table = np.where(j % 2 == 0, np.sin(angles), np.cos(angles))
    return torch.from_numpy(table.astype(np.float32))[None]
