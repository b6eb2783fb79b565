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


# The 2×2 running cell: its four positions ``(h % 2, w % 2)`` in the order the kept ones run through them.
RUNNING_CELL_ORDER = ((0, 0), (0, 1), (1, 1), (1, 0))
DECODER_MASK_RATIOS = (0.25, 0.5, 0.75)


def running_cell(grid: tuple[int, int, int], ratio: float, offset: torch.Tensor) -> torch.Tensor:
    """VideoMAE V2's running-cell decoder mask: True = kept for the decoder, ``(B, T'·H'·W')``.

    Space is tiled by 2×2 cells; at token time ``t`` a cell keeps ``4·(1-ratio)`` of its four positions: those
    whose rank in :data:`RUNNING_CELL_ORDER` is among ``(t + offset) … (t + offset + kept - 1)`` (mod 4), so the
    kept positions run around the cell as time advances and every position is kept equally often. ``offset``
    ``(B,)`` (integers) shifts the pattern per sample. A border cell of an odd grid is cut, not padded.
    """
    t, h, w = grid
    kept = round(4 * (1 - ratio))
    rank = torch.empty(2, 2, dtype=torch.long)
    for i, (r, c) in enumerate(RUNNING_CELL_ORDER):
        rank[r, c] = i
    rank = rank.to(offset.device)
    cell = rank[torch.arange(h, device=offset.device) % 2][:, torch.arange(w, device=offset.device) % 2]  # (H', W')
    time = torch.arange(t, device=offset.device).view(1, t, 1, 1)
    shift = (cell.view(1, 1, h, w) - time - offset.view(-1, 1, 1, 1)) % 4
    return (shift < kept).flatten(1)


class DecoderMask:
    """Dual masking (VideoMAE V2): the masked tokens that the pixel decoder reconstructs, a fixed count per sample.

    The decoder keeps ``1 - ratio`` of the tokens by a :func:`running_cell` pattern (random phase per sample); it
    sees the encoder's visible tokens plus mask tokens at the *masked* positions it keeps, and the loss is taken on
    those. The encoder's mask and the cell pattern are independent, so their intersection varies from sample to
    sample; to stack tensors the count is fixed at :meth:`num_decoded` = ``n_masked - int(ratio · n_masked)`` (the
    expected size of the intersection, counted as :class:`MaskGenerator` counts) and chosen among the masked tokens
    by priority: masked tokens the cell keeps first, then the others, random order within each group. When the
    intersection is larger, a random subset of it is decoded; when smaller, random masked tokens outside the cell
    pattern fill the count. Every random number comes from ``generator`` (the module's mask generator): exact
    resume replays the same decoder masks.
    """

    def __init__(self, ratio: float = 0.5) -> None:
        if ratio not in DECODER_MASK_RATIOS:
            raise ValueError(
                f"decoder mask ratio must be one of {DECODER_MASK_RATIOS} (a 2x2 running cell), got {ratio}"
            )
        self.ratio = ratio

    def num_decoded(self, num_masked: int) -> int:
        """Masked tokens per sample that the pixel decoder reconstructs."""
        return num_masked - int(self.ratio * num_masked)

    def __call__(
        self,
        masked: torch.Tensor,
        grid: tuple[int, int, int],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Positions ``(B, num_decoded)``, ascending, picked from the masked positions ``masked (B, N_masked)``."""
        batch, device = masked.shape[0], masked.device
        offset = torch.randint(0, 4, (batch,), device=device, generator=generator)
        keep = running_cell(grid, self.ratio, offset).gather(1, masked)
        score = keep.to(torch.float32) + torch.rand(masked.shape, device=device, generator=generator)
        pick = score.topk(self.num_decoded(masked.shape[1]), dim=1).indices.sort(dim=1).values
        return masked.gather(1, pick)


def positions_mask(positions: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The boolean mask ``(B, num_tokens)`` that is True at ``positions (B, K)``."""
    mask = torch.zeros(positions.shape[0], num_tokens, dtype=torch.bool, device=positions.device)
    return mask.scatter_(1, positions, True)
