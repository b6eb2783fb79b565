"""V-JEPA multi-block 3-D masks: per mask set, the union of ``num_blocks`` boxes is predicted, the rest is context.

Written from the V-JEPA 2 paper (arXiv 2506.09985) and its collator's documented behaviour, drawn here on the host
from one ``torch.Generator`` (saved for exact resume) instead of inside data-loader workers:

* one box size per batch and mask set: a single uniform draw ``u`` sets the temporal scale, the spatial scale and
  the aspect ratio (``lo + u·(hi − lo)`` each); ``h = round(√(keep·ar))``, ``w = round(√(keep/ar))`` with
  ``keep = int(H'·W'·spatial)``, clipped to the grid; ``t = max(1, int(T'·temporal))``;
* per sample, ``num_blocks`` boxes at uniform positions; a sample whose context came out empty is drawn again;
* every sample's context and target ids are cut to the batch's smallest counts (ascending ids, so the highest ids
  go), as the official collator does, so that they stack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch


class BlockSpec(NamedTuple):
    """One mask set: ``num_blocks`` boxes of the given spatial/temporal scale range and aspect-ratio range."""

    num_blocks: int = 8
    spatial_scale: tuple[float, float] = (0.15, 0.15)
    temporal_scale: tuple[float, float] = (1.0, 1.0)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)


# V-JEPA 2 pre-training (configs/train/vitl16/pretrain-256px-16f.yaml): 8 small blocks + 2 large blocks.
VJEPA2_MASKS = (BlockSpec(8, (0.15, 0.15)), BlockSpec(2, (0.7, 0.7)))


class MaskSet(NamedTuple):
    """Flat token ids ``(B, K)`` of the context (seen by the encoder) and the targets (predicted), each ascending."""

    context: torch.Tensor
    target: torch.Tensor


def _uniform(bounds: Sequence[float], u: float) -> float:
    return bounds[0] + u * (bounds[1] - bounds[0])


def block_size(spec: BlockSpec, grid: tuple[int, int, int], generator: torch.Generator) -> tuple[int, int, int]:
    """``(t, h, w)`` of this batch's boxes for ``spec`` on a ``(T', H', W')`` grid."""
    depth, height, width = grid
    u = float(torch.rand(1, generator=generator))
    t = max(1, int(depth * _uniform(spec.temporal_scale, u)))
    keep = int(height * width * _uniform(spec.spatial_scale, u))
    ratio = _uniform(spec.aspect_ratio, u)
    h = min(height, int(round(math.sqrt(keep * ratio))))
    w = min(width, int(round(math.sqrt(keep / ratio))))
    return t, max(1, h), max(1, w)


def _sample_context(
    size: tuple[int, int, int], num_blocks: int, grid: tuple[int, int, int], generator: torch.Generator
) -> torch.Tensor:
    """Bool ``(T'·H'·W',)``: True = context (outside every box)."""
    context = torch.ones(grid, dtype=torch.bool)
    for _ in range(num_blocks):
        starts = [int(torch.randint(0, g - s + 1, (1,), generator=generator)) for g, s in zip(grid, size)]
        t0, h0, w0 = starts
        context[t0 : t0 + size[0], h0 : h0 + size[1], w0 : w0 + size[2]] = False
    return context.flatten()


class MultiBlockMasks:
    """Draw one :class:`MaskSet` per spec for a batch: ``masks(batch_size, grid, generator)``."""

    def __init__(self, specs: Sequence[BlockSpec | dict] = VJEPA2_MASKS, max_tries: int = 100) -> None:
        self.specs = tuple(s if isinstance(s, BlockSpec) else BlockSpec(**_tuples(s)) for s in specs)
        if not self.specs:
            raise ValueError("MultiBlockMasks needs at least one mask set (specs is empty)")
        for spec in self.specs:
            if spec.num_blocks < 1 or not 0 < spec.spatial_scale[0] <= spec.spatial_scale[1] <= 1:
                raise ValueError(f"bad mask set {spec}: expected num_blocks >= 1 and 0 < spatial_scale <= 1")
        self.max_tries = max_tries

    def __call__(
        self, batch_size: int, grid: tuple[int, int, int], generator: torch.Generator
    ) -> list[MaskSet]:
        return [self._one_set(spec, batch_size, grid, generator) for spec in self.specs]

    def _one_set(
        self, spec: BlockSpec, batch_size: int, grid: tuple[int, int, int], generator: torch.Generator
    ) -> MaskSet:
        size = block_size(spec, grid, generator)
        contexts = []
        for _ in range(batch_size):
            for _ in range(self.max_tries):
                context = _sample_context(size, spec.num_blocks, grid, generator)
                if context.any():
                    break
            else:
                raise ValueError(f"mask set {spec} leaves no context on grid {grid} after {self.max_tries} draws")
            contexts.append(context)
        keep = min(int(c.sum()) for c in contexts)
        hide = min(int((~c).sum()) for c in contexts)
        context_ids = torch.stack([c.nonzero().flatten()[:keep] for c in contexts])
        target_ids = torch.stack([(~c).nonzero().flatten()[:hide] for c in contexts])
        return MaskSet(context_ids, target_ids)


def _tuples(spec: dict) -> dict:
    """Hydra lists → tuples for :class:`BlockSpec`."""
    return {k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in spec.items()}
