"""Parsers for official annotation formats."""

from __future__ import annotations

from pathlib import Path

from surgvista.utils.errors import UserError

CHOLEC80_PHASES = (
    "Preparation", "CalotTriangleDissection", "ClippingCutting", "GallbladderDissection",
    "GallbladderPackaging", "CleaningCoagulation", "GallbladderRetraction",
)


class AnnotationError(UserError, ValueError):
    """An annotation file that does not follow its dataset's official format."""


def read_text(path: str | Path) -> str:
    """The UTF-8 text of an annotation file (a BOM is dropped); an undecodable byte is an error naming the file."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); re-save it as UTF-8"
        ) from None


def read_json(path: str | Path):
    """A JSON annotation file; invalid JSON or text is an error naming the file."""
    import json

    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None


def read_phase_file(path: str | Path, phase_names=CHOLEC80_PHASES) -> list[int]:
    """Per-frame phase ids from a Cholec80-style ``Frame<TAB>Phase`` file (frames 0..N-1 in order)."""
    path = Path(path)
    lines = [line for line in read_text(path).splitlines() if line.strip()]
    if not lines or lines[0].split("\t")[:2] != ["Frame", "Phase"]:
        raise AnnotationError(f"{path}: expected a 'Frame<TAB>Phase' header, got {lines[:1]}")
    index = {name: i for i, name in enumerate(phase_names)}
    phases = []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip().isdigit():
            raise AnnotationError(f"{path}:{lineno}: expected '<frame><TAB><phase>', got {line!r}")
        frame, name = int(parts[0]), parts[1].strip()
        if frame != len(phases):
            raise AnnotationError(f"{path}:{lineno}: frame {frame} out of order, expected {len(phases)}")
        if name not in index:
            raise AnnotationError(f"{path}:{lineno}: unknown phase {name!r}; expected one of {list(phase_names)}")
        phases.append(index[name])
    return phases


def write_phase_file(path: str | Path, phases: list[int], phase_names=CHOLEC80_PHASES) -> None:
    """Write per-frame phase ids in the Cholec80 ``Frame<TAB>Phase`` format."""
    rows = ["Frame\tPhase", *(f"{i}\t{phase_names[p]}" for i, p in enumerate(phases))]
    Path(path).write_text("\n".join(rows) + "\n")
