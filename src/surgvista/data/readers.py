"""Video readers: decord (default), PyAV (fallback) and frame folders, all returning RGB uint8 frames."""

from __future__ import annotations

import importlib.util
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from surgvista.data.manifest import VideoEntry, frame_files

log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav")


class VideoDecodeError(RuntimeError):
    """A video file that cannot be opened or decoded."""


class VideoReader:
    """Interface: ``len(reader)`` decoded frames, ``fps``, and ``read(indices) -> (T, H, W, 3) uint8``."""

    path: Path
    fps: float

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, indices: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def _check(self, indices: Sequence[int]) -> None:
        n = len(self)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"{self.path}: frame indices {bad[:5]} out of range [0, {n})")


class DecordReader(VideoReader):
    """Random access through decord (keyframe-aware seeking)."""

    def __init__(self, path: Path) -> None:
        import decord

        self.path = path
        try:
            self._vr = decord.VideoReader(str(path), num_threads=1)
        except (decord.DECORDError, RuntimeError) as e:
            raise VideoDecodeError(f"cannot open video {path} with decord: {e}") from e
        self.fps = float(self._vr.get_avg_fps())

    def __len__(self) -> int:
        return len(self._vr)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        import decord

        self._check(indices)
        try:
            return self._vr.get_batch(list(indices)).asnumpy()
        except (decord.DECORDError, RuntimeError) as e:
            raise VideoDecodeError(f"cannot decode frames {list(indices)[:5]}… of {self.path}: {e}") from e


class PyAVReader(VideoReader):
    """Sequential PyAV decoding up to the last requested frame (slower; for when decord is unavailable)."""

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                self.fps = float(stream.average_rate or stream.guessed_rate or 0)
                self._len = stream.frames or sum(1 for _ in container.decode(stream))
        except (av.FFmpegError, IndexError) as e:
            raise VideoDecodeError(f"cannot open video {path} with PyAV: {e}") from e

    def __len__(self) -> int:
        return self._len

    def read(self, indices: Sequence[int]) -> np.ndarray:
        import av

        self._check(indices)
        wanted, last, frames = set(indices), max(indices), {}
        try:
            with av.open(str(self.path)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i in wanted:
                        frames[i] = frame.to_ndarray(format="rgb24")
                    if i >= last:
                        break
        except av.FFmpegError as e:
            raise VideoDecodeError(f"cannot decode {self.path}: {e}") from e
        if len(frames) != len(wanted):
            raise VideoDecodeError(f"{self.path}: decoded fewer frames than its header promised")
        return np.stack([frames[i] for i in indices])


class FrameFolderReader(VideoReader):
    """A folder of numbered JPEG/PNG frames (converted to RGB)."""

    def __init__(self, path: Path) -> None:
        self.path, self.fps = path, 1.0
        self._files = frame_files(path)

    def __len__(self) -> int:
        return len(self._files)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        self._check(indices)
        out = []
        for i in indices:
            try:
                with Image.open(self._files[i]) as img:
                    out.append(np.asarray(img.convert("RGB")))
            except OSError as e:
                raise VideoDecodeError(f"cannot read frame image {self._files[i]}: {e}") from e
        return np.stack(out)


def check_backend(backend: str) -> None:
    """Raise a ``ValueError`` naming ``backend`` unless it is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")


def open_reader(path: str | Path, backend: str = "decord") -> VideoReader:
    """Open a video file with ``backend`` (``decord`` | ``pyav``) or a frame folder."""
    path = Path(path)
    if path.is_dir():
        return FrameFolderReader(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    check_backend(backend)
    if backend == "decord" and importlib.util.find_spec("decord") is None:
        log.warning("decord is not installed: decoding %s with PyAV instead (slower)", path)
        backend = "pyav"
    return DecordReader(path) if backend == "decord" else PyAVReader(path)


class EntryReader:
    """Reads manifest frames of entries, keeping a few readers open per process (LRU)."""

    def __init__(self, backend: str = "decord", cache_size: int = 8) -> None:
        check_backend(backend)  # fail at construction, not in the first DataLoader worker
        self.backend, self.cache_size = backend, cache_size
        self._cache: OrderedDict[Path, VideoReader] = OrderedDict()

    def _reader(self, entry: VideoEntry) -> VideoReader:
        reader = self._cache.pop(entry.source, None) or open_reader(entry.source, self.backend)
        self._cache[entry.source] = reader
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return reader

    def read(self, entry: VideoEntry, frame_ids: Sequence[int]) -> np.ndarray:
        """Frames ``frame_ids`` (manifest numbering) of ``entry`` as ``(T, H, W, 3)`` uint8."""
        reader = self._reader(entry)
        if entry.format == "video" and entry.fps and reader.fps:
            step = reader.fps / entry.fps
            frame_ids = [min(int(round(i * step)), len(reader) - 1) for i in frame_ids]
        return reader.read(frame_ids)

    def __getstate__(self) -> dict:
        # Open decoders are not picklable and must not be shared across DataLoader workers.
        return {**self.__dict__, "_cache": OrderedDict()}
