"""Tube and random token masks, drawn per batch on the model's device."""

from __future__ import annotations

import torch

MASK_KINDS = ("tube", "random")


class MaskGenerator:
    """Boolean masks ``(B, T'·H'·W')`` with True = masked and the same masked count in every sample.

    ``tube``: ``int(ratio · H'·W')`` positions per time slice, identical at every slice.
    ``random``: ``int(ratio · T'·H'·W')`` positions anywhere.
    """

    def __init__(self, kind: str = "tube", ratio: float = 0.85) -> None:
        if kind not in MASK_KINDS:
            raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
        self.kind, self.ratio = kind, ratio

    def num_masked(self, grid: tuple[int, int, int]) -> int:
        """Masked tokens per sample for a ``(T', H', W')`` grid."""
        t, h, w = grid
        return int(self.ratio * h * w) * t if self.kind == "tube" else int(self.ratio * t * h * w)

    def __call__(
        self,
        batch_size: int,
        grid: tuple[int, int, int],
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        t, h, w = grid
        width = h * w if self.kind == "tube" else t * h * w
        count = int(self.ratio * width)
        order = torch.rand(batch_size, width, device=device, generator=generator).argsort(dim=1)
        mask = torch.zeros(batch_size, width, dtype=torch.bool, device=device)
        mask.scatter_(1, order[:, :count], True)
        return mask.repeat(1, t) if self.kind == "tube" else mask


def token_order(mask: torch.Tensor, num_masked: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``(B, N_visible)`` and ``(B, N_masked)`` of the visible and the masked tokens, each ascending.

    ``x[~mask]`` / ``x[mask]`` need the host to read the mask (a device sync on a GPU, twice per decoder);
    indexing by these positions (:func:`take`) gives the same tokens in the same order without it. ``num_masked``
    (the same in every row, :meth:`MaskGenerator.num_masked`) keeps it sync-free; ``None`` reads and checks it.
    """
    if num_masked is None:
        counts = mask.sum(1).tolist()  # one host read, outside the training step's hot path
        if len(set(counts)) > 1:
            raise ValueError(f"every row of the token mask must mask the same number of tokens, got {counts}")
        num_masked = counts[0] if counts else 0
    order = mask.to(torch.uint8).argsort(dim=1, stable=True)  # visible (0) first, both in position order
    visible = mask.shape[1] - num_masked
    return order[:, :visible], order[:, visible:]


def take(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x[b, positions[b]]`` for every row ``b``: tokens ``(B, N, D)`` → ``(B, len(positions[b]), D)``."""
    rows = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1)
    return x.expand(positions.shape[0], *x.shape[1:])[rows, positions]
