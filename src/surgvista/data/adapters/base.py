"""Shared machinery of the dataset adapters: sources, frame-time arithmetic, label sampling, the registry.

An adapter only parses its dataset's official files: :meth:`Adapter.discover` returns one :class:`Source` per
video (or clip) with the splits it belongs to and a ``labels`` callable. Everything else (frame extraction,
manifests, checksums, stats) is done once in :mod:`surgvista.data.prepare`. Frame times (exact fractions, the
rule :class:`surgvista.data.readers.EntryReader` applies): docs/datasets.md, ``--fps``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from surgvista.data.annotations import AnnotationError, read_text
from surgvista.utils.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class PrepareError(UserError, RuntimeError):
    """A dataset folder that cannot be prepared (missing files, wrong layout, bad video)."""


class LabelLengthError(AnnotationError):
    """A label file whose length disagrees with its video."""


@dataclass
class Timeline:
    """Which native frames the manifest frames show: ``native[i]`` for manifest frame ``i``."""

    native_fps: Fraction
    native_count: int
    fps: Fraction | None  # manifest rate; None = every native frame
    native: list[int]

    @property
    def times(self) -> list[float]:
        """Time in seconds of every manifest frame."""
        return [float(k / self.native_fps) for k in self.native]

    @property
    def duration(self) -> float:
        return float(self.native_count / self.native_fps)


def as_fraction(value: float | str | Fraction) -> Fraction:
    """An exact rate: ``29.97`` and ``"30000/1001"`` both give 30000/1001 (NTSC rates snap to their fraction)."""
    if isinstance(value, Fraction):
        return value
    frac = Fraction(str(value)) if not isinstance(value, float) else Fraction(value).limit_denominator(1001)
    for ntsc in (24, 30, 60):
        exact = Fraction(ntsc * 1000, 1001)
        if abs(frac - exact) < Fraction(1, 1000):
            return exact
    return frac


def native_indices(native_count: int, native_fps: Fraction, fps: Fraction | None) -> list[int]:
    """Native frame shown by each manifest frame: ``round(i * native_fps / fps)`` while it is < native_count."""
    if fps is None:
        return list(range(native_count))
    step = Fraction(native_fps) / Fraction(fps)
    out, i = [], 0
    while True:
        k = round(i * step)
        if k >= native_count:
            return out
        out.append(k)
        i += 1


@dataclass
class Source:
    """One video (or clip) of a dataset as found in the raw download."""

    video_id: str
    splits: tuple[str, ...]
    path: Path  # a video file, or the folder of an image sequence
    frames: list[Path] | None = None  # image sequence in temporal order (None for a video file)
    frame_rate: Fraction = Fraction(1)  # rate of an image sequence
    labels: Callable[[Timeline], dict] | None = None
    annotation_files: tuple[Path, ...] = ()
    clip: tuple[float, float] | None = None  # [start, end] seconds inside the video (clip-level datasets)
    meta: dict = field(default_factory=dict)

    @property
    def is_video(self) -> bool:
        return self.frames is None


class Adapter:
    """Base class: subclasses set the class attributes and implement :meth:`discover`."""

    name: str = ""
    description: str = ""
    splits: tuple[str, ...] = ("train", "val", "test")  # split files it writes
    label_names: dict[str, list[str]] = {}
    default_fps: float | None = 1.0
    variants: tuple[str, ...] = ()  # selectable official splits; first is the default
    min_seconds: float = 0.0  # videos shorter than this are dropped (logged, counted)
    random_split: dict[str, float] | None = None  # seeded random split of the video ids (fractions)
    supports_no_extract: bool = True
    accepts_videos: bool = False  # reads its videos from another dataset's download (--videos)
    val_is_test: bool = False  # its manifests say so (val.jsonl is a copy of test.jsonl)

    def __init__(self, raw: Path, variant: str | None = None, videos: Path | None = None) -> None:
        self.raw = Path(raw)
        if not self.raw.is_dir():
            raise PrepareError(f"{self.name}: raw folder {self.raw} does not exist")
        if videos is not None and not self.accepts_videos:
            raise PrepareError(f"{self.name}: --videos is not used by this dataset (its videos are in --raw)")
        self.videos_root = Path(videos) if videos is not None else None
        if self.videos_root is not None and not self.videos_root.is_dir():
            raise PrepareError(f"{self.name}: --videos folder {self.videos_root} does not exist")
        if variant is not None and variant not in self.variants:
            raise PrepareError(f"{self.name}: unknown split variant {variant!r}; expected one of {self.variants}")
        self.variant = variant or (self.variants[0] if self.variants else None)

    def discover(self) -> list[Source]:
        raise NotImplementedError

    def meta(self) -> dict:
        """Extra ``_meta`` fields of every manifest."""
        return {"val_is_test": True} if self.val_is_test else {}

    # helpers ---------------------------------------------------------------------------------------------
    def find(self, *candidates: str, kind: str = "dir", required: bool = True) -> Path | None:
        """The first of ``candidates`` (paths relative to raw, matched case-insensitively) that exists."""
        for cand in candidates:
            path = find_ci(self.raw, cand)
            if path is not None and (path.is_dir() if kind == "dir" else path.is_file()):
                return path
        if required:
            raise PrepareError(
                f"{self.name}: none of {list(candidates)} found under {self.raw} "
                f"(see docs/datasets.md for the expected layout)"
            )
        return None


REGISTRY: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    REGISTRY[cls.name] = cls
    return cls


# --- file helpers -----------------------------------------------------------------------------------------
def find_ci(root: Path, relative: str) -> Path | None:
    """``root/relative`` with every component matched case-insensitively (real copies differ in case)."""
    path = root
    for part in Path(relative).parts:
        exact = path / part
        if exact.exists():
            path = exact
            continue
        if not path.is_dir():
            return None
        match = [p for p in path.iterdir() if p.name.lower() == part.lower()]
        if not match:
            return None
        path = match[0]
    return path


def numeric_key(path: Path | str) -> tuple:
    """Sort key comparing digit runs as numbers (``12_975`` < ``12_1000``; ``VID2`` < ``VID10``)."""
    name = Path(path).name
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.findall(r"\d+|\D+", name))


def image_files(folder: Path) -> list[Path]:
    """Image files of ``folder`` sorted numerically by name."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=numeric_key)


def video_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()), key=numeric_key
    )


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file (BOM and CRLF tolerant)."""
    return [line for line in read_text(path).splitlines() if line.strip()]


def number(text: str) -> int:
    """``int`` of ``"12"``, ``"12.0"`` or ``"1.2e+01"`` (Endoscapes writes ids in scientific notation)."""
    value = float(text)
    if value != int(value):
        raise ValueError(f"not an integer: {text!r}")
    return int(value)


# --- label sampling ---------------------------------------------------------------------------------------
def check_length(path: Path, have: int, expected: int, unit: str, tolerance: int) -> None:
    if abs(have - expected) > tolerance:
        raise LabelLengthError(
            f"{path}: label file has {have} {unit} but the video has {expected} {unit} "
            f"(tolerance {tolerance}); is it the annotation of another video?"
        )


def sample_per_frame(values: Sequence, path: Path, tl: Timeline, missing=-1, tolerance_s: float = 1.0) -> list:
    """Labels given for every native frame (Cholec80, M2CAI16, HeiChole, CATARACTS, Cataract-21)."""
    check_length(path, len(values), tl.native_count, "frames", max(1, math.ceil(tolerance_s * tl.native_fps)))
    return [values[k] if k < len(values) else missing for k in tl.native]


def sample_per_second(values: Sequence, path: Path, tl: Timeline, missing=-1, tolerance: int = 2) -> list:
    """Labels given once per second, row ``s`` covering ``[s, s+1)`` (AutoLaparo, PitVis)."""
    check_length(path, len(values), math.ceil(tl.native_count / tl.native_fps), "seconds", tolerance)
    out = []
    for k in tl.native:
        s = math.floor(Fraction(k) / tl.native_fps)
        out.append(values[s] if s < len(values) else missing)
    return out


def sample_per_image(values: Sequence, path: Path, tl: Timeline, missing=-1) -> list:
    """Labels given once per image of an image sequence (PmLR50, ESD57)."""
    check_length(path, len(values), tl.native_count, "frames", 0)
    return [values[k] for k in tl.native]


def phase_labels(sample: Callable[..., list], *args) -> Callable[[Timeline], dict]:
    """A :attr:`Source.labels` callable giving ``{"phase": sample(*args, timeline)}``."""
    return lambda tl: {"phase": sample(*args, tl)}


def class_index(names: Sequence[str], path: Path, where: str) -> Callable[[str], int]:
    """A lookup name → id that raises an error naming the file, line and the known names."""
    index = {n: i for i, n in enumerate(names)}

    def lookup(name: str, lineno: int | None = None) -> int:
        if name not in index:
            loc = f"{path}:{lineno}" if lineno else str(path)
            raise AnnotationError(f"{loc}: unknown {where} {name!r}; expected one of {list(names)}")
        return index[name]

    return lookup


def sequential_phase_ids(
    rows: list[tuple[int, list[str]]], path: Path, n_classes: int, base: int = 0, note: str = ""
) -> list[int]:
    """0-based phase ids from ``(lineno, [frame, phase, ...])`` rows whose frames count up from ``base`` and whose
    ids lie in ``base..base+n_classes-1``; an out-of-order frame or unknown id is an error naming ``path:line``."""
    values = []
    for lineno, parts in rows:
        frame = parse_int(parts[0], path, lineno, "frame number")
        phase = parse_int(parts[1], path, lineno, "phase id")
        if frame != len(values) + base:
            raise AnnotationError(f"{path}:{lineno}: frame {frame} out of order, expected {len(values) + base}{note}")
        if not base <= phase < base + n_classes:
            raise AnnotationError(
                f"{path}:{lineno}: unknown phase id {phase}; expected {base}..{base + n_classes - 1}"
            )
        values.append(phase - base)
    return values


def parse_int(text: str, path: Path, lineno: int, what: str) -> int:
    try:
        return number(text.strip())
    except ValueError:
        raise AnnotationError(f"{path}:{lineno}: expected an integer {what}, got {text!r}") from None
