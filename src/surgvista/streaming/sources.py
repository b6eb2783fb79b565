"""Frame sources of a stream: a video file, a frame folder, a live source (camera device or network URL, PyAV).

Each yields ``(frame H×W×3 uint8, timestamp in seconds)``, decoding every frame once; ``source_fps`` is the
source's native rate when known. A source that ends before its announced length or yields a frame it cannot
decode raises :class:`~surgvista.streaming.stream.StreamError` naming the source and the frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from surgvista.data.readers import open_reader
from surgvista.streaming.stream import StreamError

CHUNK = 16  # frames decoded per read of a file


class FrameSource:
    """Base class: ``name``, ``source_fps`` and iteration over ``(frame, timestamp)``."""

    name: str = ""
    source_fps: float | None = None

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        raise NotImplementedError


class VideoFileSource(FrameSource):
    """A video file read with ``eval.py``'s decoder (``backend``), so the frames are the evaluation's frames."""

    def __init__(self, path: str | Path, backend: str = "decord") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StreamError(f"{self.path}: no such video file")
        self.reader = open_reader(self.path, backend)
        self.name, self.source_fps, self.length = self.path.stem, float(self.reader.fps or 0) or None, len(self.reader)

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        fps = self.source_fps or 1.0
        for start in range(0, self.length, CHUNK):
            ids = list(range(start, min(start + CHUNK, self.length)))
            try:
                frames = self.reader.read(ids)
            except Exception as e:
                raise StreamError(
                    f"{self.path}: frames {ids[0]}-{ids[-1]} of {self.length} could not be decoded "
                    f"(the stream ends early or a frame is corrupt): {e}"
                ) from e
            if len(frames) != len(ids):
                raise StreamError(f"{self.path}: the stream ends early at frame {start + len(frames)} of {self.length}")
            for k, frame in zip(ids, frames):
                yield frame, k / fps


class FrameFolderSource(FrameSource):
    """A folder of frame images in name order at ``fps`` frames per second."""

    def __init__(self, path: str | Path, fps: float) -> None:
        from surgvista.data.readers import FrameFolderReader

        self.path = Path(path)
        if not self.path.is_dir():
            raise StreamError(f"{self.path}: no such frame folder")
        self.reader = FrameFolderReader(self.path)
        self.name, self.source_fps, self.length = self.path.name, float(fps), len(self.reader)

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        for k in range(self.length):
            try:
                frame = self.reader.read([k])[0]
            except Exception as e:
                raise StreamError(f"{self.path}: frame {k} of {self.length} is corrupt or unreadable: {e}") from e
            yield frame, k / self.source_fps


class LiveSource(FrameSource):
    """A camera device (``/dev/video0``, ``format="v4l2"``), a network URL (``rtsp://…``) or any readable file
    object (a pipe), decoded as it arrives with PyAV; timestamps are presentation times since the first frame."""

    def __init__(self, url, format: str | None = None, name: str = "live", options: dict | None = None) -> None:
        self.url, self.format, self.options, self.name = url, format, options or {}, name

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        import av

        try:
            container = av.open(self.url, format=self.format, options=self.options)
        except Exception as e:
            raise StreamError(f"{self.name}: cannot open the live source: {e}") from e
        with container:
            stream = container.streams.video[0]
            self.source_fps = float(stream.average_rate) if stream.average_rate else None
            yield from self._decode(container, stream)

    def _decode(self, container, stream) -> Iterator[tuple[np.ndarray, float]]:
        """Frames with their times since the first frame (a live stream's clock rarely starts at 0)."""
        count, first = 0, None
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else count / (self.source_fps or 1.0)
                first = t if first is None else first
                yield frame.to_ndarray(format="rgb24"), t - first
                count += 1
        except Exception as e:
            if isinstance(e, StreamError):
                raise
            raise StreamError(f"{self.name}: frame {count} could not be decoded (corrupt or cut stream): {e}") from e
