"""Clip dataset over manifests: every manifest frame is the anchor (last frame) of one causal clip."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from surgvista.data.manifest import VideoEntry, read_manifest
from surgvista.data.readers import EntryReader
from surgvista.data.sampling import causal_clip_indices


class VideoClipDataset(Dataset):
    """One sample per ``anchor_stride``-th frame of every video in ``manifests``.

    Returns ``{"video": (3, T, H, W) float, "index": int}``; the clip is ``num_frames`` frames at stride
    ``sampling_rate`` ending at the anchor (spec pretrain §6.2).
    """

    def __init__(
        self,
        manifests: Sequence[str | Path],
        transform: Callable[[np.ndarray], torch.Tensor],
        num_frames: int = 16,
        sampling_rate: int = 4,
        backend: str = "decord",
        anchor_stride: int = 1,
    ) -> None:
        if not manifests:
            raise ValueError("VideoClipDataset needs at least one manifest")
        self.entries: list[VideoEntry] = [e for m in manifests for e in read_manifest(m).entries]
        self.transform, self.num_frames, self.sampling_rate = transform, num_frames, sampling_rate
        self.anchor_stride = anchor_stride
        counts = [len(range(0, e.num_frames, anchor_stride)) for e in self.entries]
        self._offsets = np.cumsum([0, *counts])
        self.reader = EntryReader(backend)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[VideoEntry, int]:
        """``(entry, anchor frame)`` of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range [0, {len(self)})")
        v = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return self.entries[v], (index - int(self._offsets[v])) * self.anchor_stride

    def __getitem__(self, index: int) -> dict:
        entry, anchor = self.locate(index)
        ids = causal_clip_indices(anchor, self.num_frames, self.sampling_rate)
        return {"video": self.transform(self.reader.read(entry, ids)), "index": index}
