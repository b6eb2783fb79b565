"""The overlay video of a stream: each frame with its predicted phase name and confidence, and a ribbon of the
phases predicted so far along the bottom (one colour per phase, the palette of the evaluation's ribbons), encoded as
an h264 mp4 with PyAV and written atomically (a failure leaves no file)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from surgvista.evaluation.plots import class_colors
from surgvista.utils.errors import UserError
from surgvista.utils.io import atomic_write

ROW_KEYS = ("frame", "phase", "probs")


class OverlayError(UserError, ValueError):
    """Predictions, frames or an output path that an overlay video cannot be made from."""


def phase_palette(num_phases: int) -> np.ndarray:
    """``(num_phases, 3)`` uint8 RGB colours of the phases (:func:`surgvista.evaluation.plots.class_colors`)."""
    return np.array([[round(255 * c) for c in rgba[:3]] for rgba in class_colors(num_phases)], dtype=np.uint8)


def check_rows(rows: Sequence[dict], label_names: Sequence[str], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The rows' phases ``(N,)`` and confidences ``(N,)``, or one :class:`OverlayError` naming the bad row/key."""
    if len(rows) == 0:
        raise OverlayError(f"{path}: no predictions to draw (empty rows)")
    k = len(label_names)
    phases, confidence, last = np.empty(len(rows), np.int64), np.empty(len(rows)), None
    for i, row in enumerate(rows):
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise OverlayError(f"{path}: row {i} lacks key(s) {missing}; expected keys {list(ROW_KEYS)}")
        frame, phase, probs = row["frame"], row["phase"], np.asarray(row["probs"], dtype=float)
        if not isinstance(phase, (int, np.integer)) or not 0 <= phase < k:
            raise OverlayError(f"{path}: row {i} phase={phase!r}; expected an integer in [0, {k})")
        if probs.shape != (k,) or not np.isfinite(probs).all():
            raise OverlayError(f"{path}: row {i} probs of shape {probs.shape}; expected {k} finite numbers")
        if not isinstance(frame, (int, np.integer)) or (last is not None and frame <= last):
            raise OverlayError(f"{path}: row {i} frame={frame!r}; expected integers increasing row by row")
        phases[i], confidence[i], last = phase, probs[phase], frame
    return phases, confidence


def check_path(path: Path) -> Path:
    """An ``.mp4`` path whose folder is (or can be made) a folder and that is not itself a folder."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise OverlayError(f"{path}: an overlay video needs a path ending in .mp4")
    if path.is_dir():
        raise OverlayError(f"{path}: is a folder; expected the path of an .mp4 file")
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise OverlayError(f"{path}: {blocked} is a file, not a folder")
    return path


def ribbon_strip(phases: np.ndarray, width: int, height: int, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The full-length ribbon ``(height, width, 3)`` (column ``x`` shows prediction ``x·N // width``) and each
    column's prediction index ``(width,)`` (a column is drawn once that prediction exists)."""
    index = np.arange(width) * len(phases) // width
    return np.broadcast_to(palette[phases[index]], (height, width, 3)), index


def label_font(height: int):
    """PIL's default font at a size that suits a frame ``height`` pixels tall (the bitmap font if no FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(10, height // 18))
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def draw_frame(frame: np.ndarray, text: str, colour: np.ndarray, ribbon: np.ndarray, font) -> np.ndarray:
    """``frame`` with ``text`` on a dark box (a swatch of the phase's ``colour`` beside it) and ``ribbon`` (with
    the columns not yet reached left dark) over its bottom rows."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad, swatch = 3, bottom - top
    draw.rectangle((0, 0, right + 3 * pad + swatch, bottom + 2 * pad), fill=(0, 0, 0))
    draw.rectangle((pad, pad + top, pad + swatch, pad + bottom), fill=tuple(int(c) for c in colour))
    draw.text((2 * pad + swatch, pad), text, fill=(255, 255, 255), font=font)
    out = np.asarray(image).copy()
    out[-ribbon.shape[0] :] = ribbon
    return out


def frame_array(frame: np.ndarray, i: int, first: tuple | None, path: Path) -> np.ndarray:
    """Frame ``i`` as an ``(H, W, 3)`` uint8 array of the first frame's shape ``first``, cut to even sides (h264)."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise OverlayError(f"{path}: frame {i} is {frame.dtype} {frame.shape}; expected HxWx3 uint8")
    if first is not None and frame.shape != first:
        raise OverlayError(f"{path}: frame {i} has shape {frame.shape}; the first frame had {first}")
    if frame.shape[0] < 16 or frame.shape[1] < 16:
        raise OverlayError(f"{path}: frame {i} is {frame.shape[:2]}; expected at least 16x16 pixels")
    return frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]


class OverlayEncoder:
    """Draws and encodes the frames of one overlay video into an open PyAV ``container``."""

    def __init__(self, container, phases: np.ndarray, confidence: np.ndarray, names: Sequence[str], fps: float):
        self.container, self.phases, self.confidence, self.names, self.fps = container, phases, confidence, names, fps
        self.palette, self.stream, self.first, self.count = phase_palette(len(names)), None, None, 0

    def start(self, height: int, width: int) -> None:
        """The h264 stream, the full ribbon and the font, sized on the first frame."""
        self.stream = add_h264_stream(self.container, width, height, self.fps)
        self.strip, self.index = ribbon_strip(self.phases, width, max(4, height // 12), self.palette)
        self.font = label_font(height)

    def add(self, frame: np.ndarray, path: Path) -> None:
        """Draw the next frame's phase, confidence and ribbon; encode it."""
        import av

        i = self.count
        if i >= len(self.phases):
            raise OverlayError(f"{path}: more frames than the {len(self.phases)} rows of predictions")
        picture = frame_array(frame, i, self.first, path)
        if self.stream is None:
            self.first = np.asarray(frame).shape
            self.start(*picture.shape[:2])
        ribbon = np.where((self.index <= i)[None, :, None], self.strip, np.uint8(32)).astype(np.uint8)
        text = f"{self.names[self.phases[i]]}  {100 * self.confidence[i]:.0f}%"
        picture = draw_frame(picture, text, self.palette[self.phases[i]], ribbon, self.font)
        self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        self.count += 1

    def finish(self, path: Path) -> None:
        """Flush the encoder, once every row has its frame."""
        if self.count != len(self.phases):
            rows = len(self.phases)
            raise OverlayError(f"{path}: {self.count} frames for {rows} rows of predictions; expected as many")
        self.container.mux(self.stream.encode())


def add_h264_stream(container, width: int, height: int, fps: float):
    """An h264 (libx264, yuv420p, crf 18) video stream of ``container`` at ``fps`` frames per second."""
    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001), options={"crf": "18"})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    return stream


def write_overlay(
    frames: Iterable[np.ndarray], rows: Sequence[dict], label_names: Sequence[str], path: Path, fps: float
) -> Path:
    """Write the overlay video of ``rows`` (one per frame of ``frames``, in order: keys ``frame``, ``phase``,
    ``probs``) to ``path`` (h264 mp4 at ``fps``) atomically; returns ``path``. Frames are ``(H, W, 3)`` uint8 RGB
    (an odd height or width loses its last row or column: h264 needs even sides). As many frames as rows, or
    :class:`OverlayError` and no file."""
    path = check_path(path)
    phases, confidence = check_rows(rows, label_names, path)
    if not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps <= 0:
        raise OverlayError(f"{path}: fps={fps!r}; expected a positive number")

    def write(tmp: Path) -> None:
        import av

        with av.open(str(tmp), "w", format="mp4") as container:
            encoder = OverlayEncoder(container, phases, confidence, label_names, fps)
            for frame in frames:
                encoder.add(frame, path)
            encoder.finish(path)

    return atomic_write(path, write)
