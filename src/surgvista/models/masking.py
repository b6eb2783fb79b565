"""Tube and random token masks, drawn per batch on the model's device (spec pretrain §3)."""

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
