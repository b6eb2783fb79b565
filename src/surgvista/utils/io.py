"""Safe writes: every checkpoint, manifest and export goes to a temporary file in the target's folder, then is
renamed over the target, so a crash never leaves a half-written file where a good one was expected."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class OverwriteError(FileExistsError):
    """A write that would replace an existing file or folder without ``overwrite``."""


def atomic_write(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp)`` on a temporary path next to ``path``, then rename it to ``path`` (atomic on POSIX).

    The temporary file is removed if ``writer`` fails; ``path`` is untouched until the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_dir(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Fill a temporary folder next to ``path`` with ``writer(tmp_dir)``, then move it to ``path``.

    An existing ``path`` (allowed by the caller) is replaced only after the new folder is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        writer(tmp)
        if path.exists():
            old = tmp.with_name(tmp.name + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def refuse_existing(path: str | Path, overwrite: bool, key: str = "overwrite") -> None:
    """Raise :class:`OverwriteError` when ``path`` exists (a non-empty folder counts) and ``overwrite`` is false."""
    path = Path(path)
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not overwrite:
        raise OverwriteError(f"{path} already exists; pass {key}=true to replace it")


def same_or_nested(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` are the same path or one lies inside the other (after resolving links)."""
    ra, rb = Path(a).resolve(), Path(b).resolve()
    return ra == rb or ra.is_relative_to(rb) or rb.is_relative_to(ra)
