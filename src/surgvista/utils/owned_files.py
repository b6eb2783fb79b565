"""Which files of an output folder a command wrote: ``<folder>/.surgvista-written.json`` (the command and the
top-level names it wrote, written atomically before the files themselves), so that a later run replaces only
those and never a user's own files that happen to share the folder (``surgvista-prepare --out``,
``surgvista-export format=hf out=<folder>``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from surgvista.utils.errors import UserError
from surgvista.utils.io import atomic_write_text

MARKER = ".surgvista-written.json"
EXPORT, PREPARE = "surgvista-export", "surgvista-prepare"  # the writers that keep a marker


class ForeignFilesError(UserError, FileExistsError):
    """An output folder holds files that the command did not write (the message lists them)."""


def written_by(folder: str | Path, writer: str) -> set[str] | None:
    """The names ``writer`` recorded in ``folder``'s marker; ``None`` when there is no marker of ``writer``."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("writer") != writer or not isinstance(data.get("files"), list):
        return None
    return {str(name) for name in data["files"]}


def record_written(folder: str | Path, writer: str, names: Iterable[str]) -> Path:
    """Add ``names`` (top-level names in ``folder``) to ``writer``'s marker there, atomically."""
    folder = Path(folder)
    files = sorted((written_by(folder, writer) or set()) | set(names))
    text = json.dumps({"writer": writer, "files": files}, indent=1) + "\n"
    return atomic_write_text(folder / MARKER, text)


def foreign_names(folder: str | Path, own: Iterable[str]) -> list[str]:
    """The top-level names in ``folder`` that are neither in ``own`` nor the marker (sorted; none if missing)."""
    folder, own = Path(folder), set(own) | {MARKER}
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in own)


def shown(names: list[str], limit: int = 5) -> str:
    """``a, b, c`` (at most ``limit`` names, then ``and N more``)."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_replaceable_folder(folder: str | Path, writer: str, key: str = "out") -> None:
    """Before ``overwrite=true`` replaces the folder ``folder`` as a whole: it must hold only what an earlier run
    of ``writer`` recorded there (else :class:`ForeignFilesError` naming the other files)."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    own = written_by(folder, writer)
    foreign = foreign_names(folder, own or set())
    if own is None:
        raise ForeignFilesError(
            f"{key}={folder} was not written by {writer} (no {MARKER} in it; holds {shown(foreign)}); overwrite=true "
            f"replaces only a folder that an earlier {writer} wrote: choose another (new or empty) folder"
        )
    if foreign:
        raise ForeignFilesError(
            f"{key}={folder} holds files that the earlier {writer} did not write: {shown(foreign)}; overwrite=true "
            "would delete them: move them away or choose another folder"
        )
