"""Video readers: decord (default), PyAV (fallback), torchcodec (CPU or NVDEC) and frame folders, all returning RGB
uint8 frames."""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from surgvista.data.manifest import VideoEntry, frame_files
from surgvista.utils.errors import UserError

log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav", "torchcodec", "torchcodec-cuda", "memory")
MEMORY_BUDGET = 2 << 30  # bytes of decoded frames the `memory` backend keeps per process (LRU over videos)
# torchcodec loads the system's FFmpeg (4-9) shared libraries; PyPI cannot provide them.
FFMPEG_HINT = "install FFmpeg's shared libraries, e.g. `apt-get install ffmpeg` (Debian/Ubuntu)"


class VideoDecodeError(UserError, RuntimeError):
    """A video file that cannot be opened or decoded."""


class VideoReader:
    """Interface: ``len(reader)`` decoded frames, ``fps``, and ``read(indices) -> (T, H, W, 3) uint8``."""

    path: Path
    fps: float

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, indices: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (readers evicted from :class:`EntryReader`'s cache)."""

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
    """PyAV with keyframe-aware random access (one decoding thread; the strategy is described in docs/data.md).

    Frame ``i`` is the frame whose timestamp rounds to ``i / fps``; the cost of a seek (frames decoded to reach a
    target) is learnt from the file.
    """

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        try:
            self._container = av.open(str(path))
            stream = self._container.streams.video[0]
            stream.thread_count = 1  # one decoding thread per DataLoader worker
            self.fps = float(stream.average_rate or stream.guessed_rate or 0)
            self._len = stream.frames or self._count_frames()
        except (av.FFmpegError, IndexError) as e:
            raise VideoDecodeError(f"cannot open video {path} with PyAV: {e}") from e
        self._stream = stream
        self._start = stream.start_time or 0
        self._tb = float(stream.time_base or 0)
        self._random_access = self.fps > 0 and self._tb > 0
        self._iter = None
        self._pos: int | None = None  # frame number of the last decoded frame
        self._seek_cost = [1, 1]  # frames decoded to reach a target after a seek: [total, seeks]

    def _count_frames(self) -> int:
        import av

        with av.open(str(self.path)) as container:
            return sum(1 for _ in container.decode(video=0))

    def __len__(self) -> int:
        return self._len

    def close(self) -> None:
        self._iter = None
        self._container.close()

    def _index(self, pts: int) -> int:
        return int(round((pts - self._start) * self._tb * self.fps))

    def _decode(self):
        for packet in self._container.demux(self._stream):
            for frame in packet.decode():  # the last (empty) packet drains the decoder
                if frame.pts is not None:
                    yield self._index(frame.pts), frame

    def _seek(self, index: int) -> None:
        pts = self._start + int(round(index / (self.fps * self._tb)))
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        self._stream.codec_context.flush_buffers()
        self._iter, self._pos = self._decode(), None

    def read(self, indices: Sequence[int]) -> np.ndarray:
        import av

        self._check(indices)
        try:
            if self._random_access:
                frames = self._read_random(sorted(set(indices)))
                if frames is not None:
                    return np.stack([frames[i] for i in indices])
                log.warning("%s: timestamps do not map onto frame numbers; decoding it sequentially", self.path)
                self._random_access = False
            return self._read_sequential(indices)
        except av.FFmpegError as e:
            self._iter = self._pos = None
            raise VideoDecodeError(f"cannot decode {self.path}: {e}") from e

    def _read_random(self, wanted: list[int]) -> dict[int, np.ndarray] | None:
        out = {}
        for i in wanted:
            total, seeks = self._seek_cost
            sought = self._pos is None or i <= self._pos or i - self._pos > total / seeks
            if sought:
                self._seek(i)
            decoded = 0
            for index, frame in self._iter:
                decoded += 1
                if index > i or (self._pos is not None and index <= self._pos):
                    return None  # skipped past the target, or timestamps not increasing
                self._pos = index
                if index == i:
                    out[i] = frame.to_ndarray(format="rgb24")
                    break
            else:
                return None  # ran out of frames before the target
            if sought:
                self._seek_cost = [total + decoded, seeks + 1]
        return out

    def _read_sequential(self, indices: Sequence[int]) -> np.ndarray:
        import av

        wanted, last, frames = set(indices), max(indices), {}
        with av.open(str(self.path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
        if len(frames) != len(wanted):
            raise VideoDecodeError(f"{self.path}: decoded fewer frames than its header promised")
        return np.stack([frames[i] for i in indices])


class TorchCodecReader(VideoReader):
    """torchcodec's ``VideoDecoder`` with exact seeking: frame ``i`` is the ``i``-th in presentation order.

    ``device="cuda"`` decodes with NVDEC (:meth:`read_tensor` keeps the frames on the GPU; use ``num_workers=0``).
    """

    def __init__(self, path: Path, device: str = "cpu") -> None:
        from torchcodec.decoders import VideoDecoder

        self.path, self.device = path, device
        try:
            self._decoder = VideoDecoder(str(path), seek_mode="exact", num_ffmpeg_threads=1,
                                         dimension_order="NHWC", device=device)
        except (RuntimeError, ValueError) as e:
            raise VideoDecodeError(f"cannot open video {path} with torchcodec: {e}") from e
        meta = self._decoder.metadata
        self.fps = float(meta.average_fps or 0)
        self._len = len(self._decoder)

    def __len__(self) -> int:
        return self._len

    def close(self) -> None:
        self._decoder = None

    def read_tensor(self, indices: Sequence[int]):
        """Frames ``indices`` as a ``(T, H, W, 3)`` uint8 tensor on the decoder's device."""
        self._check(indices)
        try:
            return self._decoder.get_frames_at(list(indices)).data
        except (RuntimeError, IndexError) as e:
            raise VideoDecodeError(f"cannot decode frames {list(indices)[:5]}… of {self.path}: {e}") from e

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return self.read_tensor(indices).cpu().numpy()


class FrameFolderReader(VideoReader):
    """A folder of numbered JPEG/PNG frames (converted to RGB)."""

    def __init__(self, path: Path) -> None:
        self.path, self.fps = path, 1.0
        self._files = frame_files(path)

    def __len__(self) -> int:
        return len(self._files)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        self._check(indices)
        out = None
        for k, i in enumerate(indices):
            frame = read_image(self._files[i])
            if out is None:
                out = np.empty((len(indices), *frame.shape), np.uint8)
            elif frame.shape != out.shape[1:]:
                raise VideoDecodeError(f"frame image {self._files[i]} is {frame.shape[1]}x{frame.shape[0]} but "
                                       f"earlier frames of {self.path} are {out.shape[2]}x{out.shape[1]}")
            out[k] = frame
        return out


def read_image(source: Path | BinaryIO, name: str | None = None) -> np.ndarray:
    """One image file (or an open binary stream, called ``name`` in errors) as ``(H, W, 3)`` uint8 RGB.

    Greyscale, palette and alpha images are converted (alpha dropped); 16-bit greyscale is scaled to 8 bits.
    """
    path = name or source
    try:
        with Image.open(source) as img:
            img.load()
            if img.mode == "RGB":
                return np.asarray(img)
            if img.mode.startswith("I;16"):
                grey = (np.asarray(img).astype(np.uint32) * 255 + 32767) // 65535
                return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
            if img.mode in ("I", "F"):
                raise VideoDecodeError(f"frame image {path} has mode {img.mode!r} (32-bit); expected 8-bit RGB, "
                                       "greyscale or palette images")
            return np.asarray(img.convert("RGB"))
    except OSError as e:  # includes FileNotFoundError and truncated/corrupt files
        raise VideoDecodeError(f"cannot read frame image {path}: {e}") from e


@functools.cache
def torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode video in this environment (not installed, no FFmpeg libraries), or ``None``."""
    if importlib.util.find_spec("torchcodec") is None:
        return "torchcodec is not installed (pip install torchcodec, the version matching torch)"
    try:
        from torchcodec._core import ops  # private: torchcodec loads FFmpeg at import and only records failure

        if not ops._FFMPEG_AVAILABLE:
            ops.load_core_libraries()  # raises the error that lists every FFmpeg version tried
    except Exception as e:  # RuntimeError/OSError from the loader, or an import error of a mismatched build
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"torchcodec cannot load FFmpeg ({first}); {FFMPEG_HINT}"
    return None


def check_backend(backend: str) -> None:
    """Raise a ``ValueError`` naming ``backend`` unless it is one of :data:`BACKENDS` and usable here."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {BACKENDS}")
    if backend.startswith("torchcodec") and (problem := torchcodec_problem()):
        raise ValueError(f"video backend {backend!r} is not usable: {problem}")


def open_reader(path: str | Path, backend: str = "decord") -> VideoReader:
    """Open a video file with ``backend`` (``decord`` | ``pyav`` | ``torchcodec`` | ``torchcodec-cuda`` | ``memory``)
    or a frame folder."""
    path = Path(path)
    if path.is_dir():
        return FrameFolderReader(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    check_backend(backend)
    backend = available_backend(backend)
    if backend.startswith("torchcodec"):
        return TorchCodecReader(path, "cuda" if backend == "torchcodec-cuda" else "cpu")
    if backend == "memory":
        return MemoryReader(path)
    return DecordReader(path) if backend == "decord" else PyAVReader(path)


class MemoryReader(VideoReader):
    """Every frame of a video decoded once (PyAV, in order) and kept in this process's memory, shared by all readers
    of the same unchanged file (LRU over videos, :data:`MEMORY_BUDGET` bytes in all): for many in-process runs over
    a small dataset (the objectives' ablation); each DataLoader worker would hold its own copy."""

    _videos: OrderedDict[tuple, tuple[np.ndarray, float]] = OrderedDict()  # (path, size, mtime) -> (frames, fps)

    def __init__(self, path: Path) -> None:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        video = self._videos.pop(key, None)
        if video is None:
            reader = PyAVReader(path)
            try:
                video = (reader.read(list(range(len(reader)))), reader.fps)
            finally:
                reader.close()
        self._videos[key] = video
        while sum(v[0].nbytes for v in self._videos.values()) > MEMORY_BUDGET and len(self._videos) > 1:
            self._videos.popitem(last=False)
        self.path, (self.frames, self.fps) = path, video

    def __len__(self) -> int:
        return len(self.frames)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        self._check(indices)
        return self.frames[np.asarray(indices, dtype=np.int64)]


@functools.cache
def available_backend(backend: str) -> str:
    """``backend``, or ``pyav`` where decord has no wheel (installed only on x86-64): logged once per process."""
    if backend == "decord" and importlib.util.find_spec("decord") is None:
        log.warning("video reader: decord is not installed on this platform, decoding with PyAV (slower)")
        return "pyav"
    log.info("video reader: %s", backend)
    return backend


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
            self._cache.popitem(last=False)[1].close()
        return reader

    def native_ids(self, entry: VideoEntry, reader: VideoReader, frame_ids: Sequence[int]) -> list[int]:
        """Decoded-frame numbers of manifest frames ``frame_ids``; errors if the file is shorter than promised."""
        n = len(reader)
        if entry.format == "video" and entry.fps and reader.fps:
            step = reader.fps / entry.fps
            native = [int(round(i * step)) for i in frame_ids]
            # Rounding may overshoot the last decoded frame by a frame or so; more means a short/truncated file.
            slack = max(1, int(np.ceil(step)))
        else:
            native, slack = list(frame_ids), 0
        worst = max(native)
        if worst > n - 1 + slack:
            raise VideoDecodeError(
                f"{entry.source} has only {n} decoded frames but manifest frame {max(frame_ids)} of "
                f"{entry.dataset}/{entry.video_id} (num_frames={entry.num_frames}, fps={entry.fps}) needs frame "
                f"{worst}: the file is truncated or shorter than its manifest row"
            )
        return [min(i, n - 1) for i in native]

    def read(self, entry: VideoEntry, frame_ids: Sequence[int]) -> np.ndarray:
        """Frames ``frame_ids`` (manifest numbering) of ``entry`` as ``(T, H, W, 3)`` uint8; each distinct frame is
        decoded once, in ascending order and in one batch."""
        reader = self._reader(entry)
        native = np.asarray(self.native_ids(entry, reader, frame_ids))
        unique, inverse = np.unique(native, return_inverse=True)
        frames = reader.read(unique.tolist())
        return frames if len(unique) == len(native) and np.array_equal(unique, native) else frames[inverse]

    def __getstate__(self) -> dict:
        # Open decoders are not picklable and must not be shared across DataLoader workers.
        return {**self.__dict__, "_cache": OrderedDict()}
