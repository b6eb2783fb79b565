"""Clip dataset over manifests: every manifest frame is the anchor (last frame) of one causal clip."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from surgvista.data.manifest import ManifestError, VideoEntry, frame_files, read_manifest
from surgvista.data.readers import EntryReader, VideoDecodeError
from surgvista.data.sampling import causal_clip_indices

log = logging.getLogger(__name__)

BAD_VIDEO_POLICIES = ("error", "skip")
# What a bad file raises at load time: undecodable/truncated media, a frame folder with a missing or broken
# image, a file that vanished after the manifest was read.
BAD_MEDIA_ERRORS = (VideoDecodeError, ManifestError, OSError)


def media_problem(entry: VideoEntry) -> str | None:
    """Why ``entry``'s media cannot be used (missing file/folder, frame count mismatch), or ``None``."""
    if entry.format == "video":
        return None if entry.source.is_file() else f"video file not found: {entry.source}"
    if not entry.source.is_dir():
        return f"frame folder not found: {entry.source}"
    try:
        count = len(frame_files(entry.source))
    except ManifestError as e:
        return str(e)
    return None if count == entry.num_frames else f"{entry.source} has {count} frames, manifest says {entry.num_frames}"


class VideoClipDataset(Dataset):
    """One sample per ``anchor_stride``-th frame of every video in ``manifests``.

    Returns ``{"video", "index", "skipped"}``: ``video`` is ``(3, T, H, W)`` (``num_clips == 1``) or
    ``(K, 3, T, H, W)`` with ``K = num_clips`` clips of the same anchor, decoded once, each with its own random
    crop (VideoMAEv2 repeated sampling; :func:`collate_clips` flattens them to a batch of B·K clips). The clip
    is ``num_frames`` frames at stride ``sampling_rate`` ending at the anchor. ``skipped`` counts the bad videos
    behind a sample (``on_bad_video``, ``min_video_frames``: docs/data.md, Bad media).
    """

    def __init__(
        self,
        manifests: Sequence[str | Path],
        transform: Callable[[np.ndarray], torch.Tensor],
        num_frames: int = 16,
        sampling_rate: int = 4,
        backend: str = "decord",
        anchor_stride: int = 1,
        num_clips: int = 1,
        on_bad_video: str = "error",
        min_video_frames: int = 1,
        max_retries: int = 10,
    ) -> None:
        if not manifests:
            raise ValueError("VideoClipDataset needs at least one manifest")
        if on_bad_video not in BAD_VIDEO_POLICIES:
            raise ValueError(f"on_bad_video={on_bad_video!r}; expected one of {BAD_VIDEO_POLICIES}")
        if num_clips < 1:
            raise ValueError(f"num_clips_per_video must be >= 1, got {num_clips}")
        self.transform, self.num_frames, self.sampling_rate = transform, num_frames, sampling_rate
        self.anchor_stride, self.num_clips, self.on_bad_video = anchor_stride, num_clips, on_bad_video
        self.max_retries = max_retries
        self.entries: list[VideoEntry] = []
        self.manifest_of_entry: list[int] = []
        dropped = []
        for m_idx, m in enumerate(manifests):
            # error: read_manifest checks every file and raises on the first bad one; skip: check each here.
            for e in read_manifest(m, check_media=on_bad_video == "error").entries:
                if on_bad_video == "skip" and (problem := media_problem(e)):
                    dropped.append(f"{e.dataset}/{e.video_id} in {m}: {problem}")
                    continue
                if e.num_frames < min_video_frames:
                    msg = (f"{e.source} ({e.dataset}/{e.video_id} in {m}) has {e.num_frames} frames, fewer than "
                           f"min_video_frames={min_video_frames}")
                    if on_bad_video == "error":
                        raise ManifestError(f"{msg}; drop it from the manifest or set data.on_bad_video=skip")
                    dropped.append(msg)
                    continue
                self.entries.append(e)
                self.manifest_of_entry.append(m_idx)
        if dropped:
            log.warning("on_bad_video=skip: left out %d bad video(s) (missing media, too few frames): %s",
                        len(dropped), "; ".join(dropped[:20]))
        if not self.entries:
            raise ManifestError(f"no usable videos in {list(map(str, manifests))}")
        self.num_dropped_videos = len(dropped)
        counts = [len(range(0, e.num_frames, anchor_stride)) for e in self.entries]
        self._offsets = np.cumsum([0, *counts])
        self.reader = EntryReader(backend)
        self.num_skipped = 0  # per process (each DataLoader worker counts its own)
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def manifest_sizes(self, num_manifests: int) -> list[int]:
        """Number of samples contributed by each of the ``num_manifests`` manifests, in order."""
        sizes = np.bincount(self.manifest_of_entry, weights=np.diff(self._offsets), minlength=num_manifests)
        return [int(n) for n in sizes]

    def locate(self, index: int) -> tuple[VideoEntry, int]:
        """``(entry, anchor frame)`` of sample ``index``."""
        entry_idx, anchor = self._locate(index)
        return self.entries[entry_idx], anchor

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range [0, {len(self)})")
        v = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return v, (index - int(self._offsets[v])) * self.anchor_stride

    def clip_frame_ids(self, anchor: int) -> list[int]:
        return causal_clip_indices(anchor, self.num_frames, self.sampling_rate)

    def _load(self, entry_idx: int, anchor: int) -> torch.Tensor:
        frames = self.reader.read(self.entries[entry_idx], self.clip_frame_ids(anchor))
        if self.num_clips == 1:
            return self.transform(frames)
        return torch.stack([self.transform(frames) for _ in range(self.num_clips)])

    def __getitem__(self, index: int) -> dict:
        skipped, original = 0, index
        while True:
            entry_idx, anchor = self._locate(index)
            try:
                if entry_idx in self._bad:
                    raise VideoDecodeError(f"{self.entries[entry_idx].source} failed earlier in this worker")
                video = self._load(entry_idx, anchor)
                return {"video": video, "index": index, "skipped": skipped}
            except BAD_MEDIA_ERRORS as e:
                if self.on_bad_video == "error":
                    raise
                skipped += 1
                self.num_skipped += 1
                if entry_idx not in self._bad:
                    self._bad.add(entry_idx)
                    log.warning("on_bad_video=skip: skipping %s/%s (%s); %d sample(s) skipped so far in this process",
                                self.entries[entry_idx].dataset, self.entries[entry_idx].video_id, e,
                                self.num_skipped)
                if skipped > self.max_retries or len(self._bad) >= len(self.entries):
                    raise RuntimeError(f"sample {original}: {skipped} bad videos in a row, last: {e}") from e
                index = self._replacement(entry_idx)

    def _replacement(self, bad_entry: int) -> int:
        """A random sample index from a video other than ``bad_entry`` (not known to be bad)."""
        for _ in range(100):
            index = random.randrange(len(self))
            v, _ = self._locate(index)
            if v != bad_entry and v not in self._bad:
                return index
        good = [v for v in range(len(self.entries)) if v not in self._bad]
        return int(self._offsets[random.choice(good)])


def collate_clips(samples: list[dict]) -> dict:
    """Batch dataset items; ``(K, 3, T, H, W)`` items are flattened to a batch of B·K clips (``index`` repeated).

    ``skipped`` becomes a plain ``int`` (the batch's number of bad-video replacements), which is not moved to
    the accelerator, so reading it costs no device sync.
    """
    video = torch.stack([s["video"] for s in samples])
    index = torch.tensor([s["index"] for s in samples])
    if video.ndim == 6:  # (B, K, 3, T, H, W)
        index = index.repeat_interleave(video.shape[1])
        video = video.flatten(0, 1)
    return {"video": video, "index": index, "skipped": sum(int(s.get("skipped", 0)) for s in samples)}
