"""Safe writes: a temporary file in the target's folder (never ``$TMPDIR``, which may be another filesystem),
fsynced, then renamed over the target, so a crash never leaves a half-written file; and the one file digest.

Written files and folders get the modes a plain ``open``/``mkdir`` would give them under the user's umask
(``0o666 & ~umask``, ``0o777 & ~umask``), not the private 0600/0700 of :mod:`tempfile`'s names."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from surgvista.utils.preflight import disk_full_error

log = logging.getLogger(__name__)


class OverwriteError(FileExistsError):
    """A write that would replace an existing file or folder without ``overwrite``."""


TEMP_SUFFIX, OLD_SUFFIX = ".tmp", ".tmp.old"


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; filesystems that refuse it are left alone."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def current_umask() -> int:
    """The process's umask (read from ``/proc/self/status`` where possible, which leaves it untouched)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(path: str | Path) -> int:
    """Give ``path`` the mode a new file (``0o666``) or folder (``0o777``) gets under the umask; returns it."""
    mode = (0o777 if Path(path).is_dir() else 0o666) & ~current_umask()
    os.chmod(path, mode)
    return mode


def temp_dir_next_to(path: str | Path) -> Path:
    """A new empty temporary folder in ``path``'s folder, named ``.<name>.<random>.tmp`` (mode from the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    umask_mode(tmp)
    return tmp


def atomic_write(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp)`` on a temporary path next to ``path``, give it the umask's mode, fsync it, rename it to
    ``path`` (atomic on POSIX) and fsync the folder; the temporary file is removed if ``writer`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        writer(tmp)
        umask_mode(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except Exception as e:
        full = disk_full_error(e, path, tmp.stat().st_size if tmp.exists() else 0)
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def replace_folder(tmp: Path, path: Path) -> Path:
    """Put the finished folder ``tmp`` (from :func:`temp_dir_next_to`) at ``path``: an existing ``path`` is moved
    aside as ``<tmp>.old``, ``tmp`` renamed, the old one deleted (a kill in between leaves the old one, which
    :func:`clean_orphaned_temp_files` puts back)."""
    old = tmp.with_name(tmp.name[: -len(TEMP_SUFFIX)] + OLD_SUFFIX)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync(path.parent)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return path


def atomic_write_dir(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Fill a temporary folder next to ``path`` with ``writer(tmp_dir)``, give everything in it the umask's modes,
    then move it to ``path`` (replacing an existing one only once the new folder is complete)."""
    path = Path(path)
    tmp = temp_dir_next_to(path)
    try:
        writer(tmp)
        for inner in tmp.rglob("*"):  # libraries that write private files (safetensors: 0600) included
            if not inner.is_symlink():
                umask_mode(inner)
        return replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _target_of(temp: Path) -> Path:
    """``.<name>.<random>.tmp[.old]`` → ``<name>`` in the same folder."""
    stem = temp.name[1:].removesuffix(".old").removesuffix(TEMP_SUFFIX)
    return temp.with_name(stem.rsplit(".", 1)[0])


def clean_orphaned_temp_files(folder: str | Path) -> list[Path]:
    """Undo what killed writes left in ``folder``: a folder moved aside (``...tmp.old``) whose target is missing is
    put back; every other temporary file or folder (``.<name>.<random>.tmp[.old]``) is removed. Returns those."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    for old in sorted(folder.glob(f".*{OLD_SUFFIX}")):
        target = _target_of(old)
        if not target.exists():
            os.replace(old, target)
            log.warning("put back %s, which an interrupted write had moved aside", target)
    orphans = sorted([*folder.glob(f".*{TEMP_SUFFIX}"), *folder.glob(f".*{OLD_SUFFIX}")])
    for p in orphans:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if orphans:
        names = ", ".join(p.name for p in orphans)
        log.warning("removed %d temporary file(s) of interrupted writes in %s: %s", len(orphans), folder, names)
    return orphans


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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's contents, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
