"""The manifest format shared by every dataset adapter (see ``docs/data.md``).

A manifest is a JSON Lines file with one row per video::

    {"dataset": "cholec80", "video_id": "video01", "format": "video", "source": "videos/video01.mp4",
     "fps": 1.0, "num_frames": 1733, "labels": {"phase": [0, 0, ...]}}

``source`` is relative to the manifest's folder (or absolute). ``format`` is ``video`` (a file decoded with
decord/PyAV; manifest frame ``i`` is the frame at time ``i / fps`` s, ``fps: null`` = every decoded frame)
or ``frames`` (a folder of ``<int>.jpg|png`` files numbered 0..num_frames-1, one per manifest frame).
``labels`` maps a label name either to a list with one value per manifest frame or to a single value for
the whole video (clip-level tasks). Label conventions shared by the adapters and the task modules:

* ``phase``: ``int`` class id per frame; ``-1`` = unannotated (usable as clip context, never a target).
* ``triplet``: sorted list of triplet ids per frame (``[]`` = no triplet); ``null`` = unannotated.
* ``cvs``: Endoscapes per-frame class ``int`` (``-1`` = unannotated), or Cholec80-CVS clip-level ``int``.
* ``action``: SurgicalActions160 clip-level ``int``.

An optional first line ``{"_meta": {"version": 1, "label_names": {"phase": [...]}, ...}}`` carries class
names (and whatever else the adapter records, e.g. ``split``). ``sha256`` (optional) is the digest of the
source video file, used by the leakage guard.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from surgvista.utils.errors import UserError
from surgvista.utils.io import atomic_write_text

FORMATS = ("video", "frames")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


class ManifestError(UserError, ValueError):
    """A manifest row that is malformed or points at missing media."""


@dataclass
class VideoEntry:
    """One row of a manifest, with ``source`` resolved to an absolute path."""

    dataset: str
    video_id: str
    format: str
    source: Path
    num_frames: int
    fps: float | None = None
    labels: dict[str, list | int] = field(default_factory=dict)
    sha256: str | None = None

    def to_row(self, root: Path) -> dict:
        """The JSON row, with ``source`` relative to ``root`` when it lies under it."""
        full = self.source.resolve()  # a relative source is relative to the working directory, not to ``root``
        source = full.relative_to(root) if full.is_relative_to(root) else full
        row = {
            "dataset": self.dataset, "video_id": self.video_id, "format": self.format, "source": str(source),
            "fps": self.fps, "num_frames": self.num_frames, "labels": self.labels,
        }
        if self.sha256:
            row["sha256"] = self.sha256
        return row


@dataclass
class Manifest:
    """Entries of one manifest file plus its optional metadata."""

    path: Path
    entries: list[VideoEntry]
    meta: dict = field(default_factory=dict)


def frame_files(folder: Path) -> list[Path]:
    """Image files of a frame folder sorted by their integer stem; errors on non-integer names or gaps."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS]
    bad = [p.name for p in files if not p.stem.isdigit()]
    if bad:
        raise ManifestError(f"frame folder {folder}: file names must be frame numbers, got {bad[:5]}")
    files.sort(key=lambda p: int(p.stem))
    numbers = [int(p.stem) for p in files]
    if numbers != list(range(len(numbers))):
        missing = sorted(set(range(max(numbers, default=-1) + 1)) - set(numbers))
        dup = len(numbers) != len(set(numbers))
        what = "duplicate frame numbers" if dup and not missing else f"missing frames {missing[:10]}"
        raise ManifestError(f"frame folder {folder} has a gap: {what} (frames must be numbered 0..N-1)")
    return files


def _parse_row(row: dict, root: Path, where: str, check_media: bool) -> VideoEntry:
    required = ("dataset", "video_id", "format", "source", "num_frames")
    missing = [k for k in required if k not in row]
    if missing:
        raise ManifestError(f"{where}: missing key(s) {missing}; a row needs {list(required)}")
    if row["format"] not in FORMATS:
        raise ManifestError(f"{where}: format {row['format']!r} is not one of {FORMATS}")
    source = Path(row["source"])
    source = source if source.is_absolute() else root / source
    num_frames, fps = row["num_frames"], row.get("fps")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames <= 0:
        raise ManifestError(f"{where}: num_frames must be a positive integer, got {num_frames!r}")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf):
        raise ManifestError(
            f"{where}: fps must be a positive number (frames per second of the manifest) or null "
            f"(every decoded frame), got {fps!r}"
        )
    labels = row.get("labels") or {}
    if not isinstance(labels, dict):
        raise ManifestError(f"{where}: labels must be a mapping name -> values, got {type(labels).__name__}")
    entry = VideoEntry(
        dataset=str(row["dataset"]), video_id=str(row["video_id"]), format=row["format"], source=source,
        num_frames=num_frames, fps=None if fps is None else float(fps), labels=dict(labels),
        sha256=row.get("sha256"),
    )
    for name, values in entry.labels.items():
        if isinstance(values, list) and len(values) != entry.num_frames:
            raise ManifestError(
                f"{where}: label {name!r} has {len(values)} values but num_frames is {entry.num_frames}"
            )
    if check_media:
        if entry.format == "video" and not source.is_file():
            raise FileNotFoundError(f"{where}: video file not found: {source}")
        if entry.format == "frames":
            if not source.is_dir():
                raise FileNotFoundError(f"{where}: frame folder not found: {source}")
            count = len(frame_files(source))
            if count != entry.num_frames:
                raise ManifestError(f"{where}: frame folder {source} has {count} frames, manifest says "
                                    f"{entry.num_frames}")
    return entry


def read_manifest(path: str | Path, check_media: bool = True) -> Manifest:
    """Parse and validate a manifest; every error names the file, line and offending value."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}{prepare_hint(path)}")
    entries, meta, lines_of = [], {}, []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: not valid JSON ({e})") from e
        if not isinstance(row, dict):
            raise ManifestError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
        if "_meta" in row:
            meta = row["_meta"]
            continue
        entries.append(_parse_row(row, path.parent, where, check_media))
        lines_of.append(lineno)
    if not entries:
        raise ManifestError(f"manifest {path} has no video rows")
    check_unique_videos(path, entries, lines_of)
    return Manifest(path, entries, meta)


def check_unique_videos(path: Path, entries: list[VideoEntry], lines: list[int]) -> None:
    """Raise :class:`ManifestError` naming every ``(dataset, video_id)`` that is on more than one row of ``path``:
    a repeated row would be sampled twice per epoch, two videos under one id would share one prediction file."""
    rows: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(entries):
        rows.setdefault((e.dataset, e.video_id), []).append(i)
    repeated = [(key, idx) for key, idx in rows.items() if len(idx) > 1]
    if not repeated:
        return
    parts = []
    for (dataset, video_id), idx in repeated:
        first = entries[idx[0]].to_row(path.parent.resolve())
        same = all(entries[i].to_row(path.parent.resolve()) == first for i in idx[1:])
        where = ", ".join(str(lines[i]) for i in idx)
        kind = "the same row repeated" if same else "different rows"
        parts.append(f"{dataset}/{video_id!r} on lines {where} ({kind})")
    raise ManifestError(
        f"{path}: video_id(s) not unique: {'; '.join(parts)}; every row must be one distinct video "
        "(a repeated row is sampled twice, two videos under one id share one prediction file)"
    )


def write_manifest(path: str | Path, entries: list[VideoEntry], meta: dict | None = None) -> Path:
    """Write ``entries`` (and optional ``meta``) as a JSON Lines manifest; sources relative to its folder."""
    path = Path(path)
    lines = [json.dumps({"_meta": meta})] if meta else []
    lines += [json.dumps(e.to_row(path.parent.resolve())) for e in entries]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def prepare_hint(path: Path) -> str:
    """How to create a missing ``<data_dir>/<dataset>/<split>.jsonl`` (empty when the folder names no dataset)."""
    from surgvista.data.adapters import REGISTRY

    dataset = path.parent.name
    if dataset not in REGISTRY:
        return ""
    return (
        f"; create it with `python -m surgvista.prepare {dataset} --raw <{dataset} download> "
        f"--out {path.parent}` (docs/datasets.md)"
    )
