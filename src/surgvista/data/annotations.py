"""Parsers for official annotation formats."""

from __future__ import annotations

from pathlib import Path

CHOLEC80_PHASES = (
    "Preparation", "CalotTriangleDissection", "ClippingCutting", "GallbladderDissection",
    "GallbladderPackaging", "CleaningCoagulation", "GallbladderRetraction",
)


class AnnotationError(ValueError):
    """An annotation file that does not follow its dataset's official format."""


def read_phase_file(path: str | Path, phase_names=CHOLEC80_PHASES) -> list[int]:
    """Per-frame phase ids from a Cholec80-style ``Frame<TAB>Phase`` file (frames 0..N-1 in order)."""
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
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
