"""Checkpoint files that are never half-written and never hold non-finite weights.

:func:`atomic_torch_save` writes ``torch.save`` output to a temp file *in the destination folder* (never
``$TMPDIR``, which may be another filesystem), fsyncs it, renames it over the destination and fsyncs the folder:
a save killed half-way leaves the previous file intact and at most an orphaned ``.<name>.tmp-*`` file, which
:func:`clean_orphaned_temp_files` removes at the next start. :class:`SafeCheckpointIO` is Lightning's checkpoint
IO with these writes and a finiteness check of every tensor in the checkpoint: a checkpoint with non-finite
values is refused (logged, not written), so the last good file stays in place.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"
OLD_MARK = ".old-"  # a checkpoint folder being replaced (folders cannot be renamed over a non-empty folder)


def temp_path(path: Path, mark: str = TEMP_MARK) -> Path:
    """A unique hidden temp file next to ``path`` (same folder, so the final rename is atomic)."""
    return path.parent / f".{path.name}{mark}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same folder, fsync, rename, fsync folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def replace_folder(tmp: Path, path: Path) -> None:
    """Put the finished folder ``tmp`` at ``path``: the old ``path`` is moved aside, ``tmp`` renamed, the old one
    deleted. A kill between the two renames leaves the old one as ``.<name>.old-*``, which
    :func:`clean_orphaned_temp_files` puts back."""
    old = None
    if path.exists():
        old = temp_path(path, OLD_MARK)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def clean_orphaned_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Undo what killed saves left in ``folder``: a checkpoint moved aside (``.<name>.old-*``) whose ``<name>`` is
    missing is put back; every other temp file or folder (``.<name>.tmp-*``, ``.<name>.old-*``) is removed.
    Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    for old in sorted(folder.glob(f".*{OLD_MARK}*")):
        target = folder / old.name[1:].split(OLD_MARK)[0]
        if not target.exists():
            os.replace(old, target)
            log.warning("put back %s, which an interrupted save had moved aside", target)
    orphans = sorted([*folder.glob(f".*{TEMP_MARK}*"), *folder.glob(f".*{OLD_MARK}*")])
    for p in orphans:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if orphans:
        log.warning(
            "removed %d temp file(s) of interrupted checkpoint saves in %s: %s",
            len(orphans),
            folder,
            ", ".join(p.name for p in orphans),
        )
    return orphans


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj.to_local() if hasattr(obj, "to_local") else obj  # a DTensor: this rank's shard
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}")


def nonfinite_entries(checkpoint: dict) -> list[str]:
    """Names of the floating-point tensors in the weights and optimiser states that hold NaN or inf (of a sharded
    checkpoint: in this rank's shards)."""
    parts = {"state_dict": checkpoint.get("state_dict", {}), "optimizer_states": checkpoint.get("optimizer_states", [])}
    return [
        name for name, t in _tensors(parts) if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic same-folder writes and a refusal to write non-finite checkpoints."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options (got {storage_options!r})")
        bad = nonfinite_entries(checkpoint)
        if bad:
            log.error(
                "refusing to write checkpoint %s: %d tensor(s) hold NaN/inf (%s%s); the previous file is kept",
                path,
                len(bad),
                ", ".join(bad[:5]),
                ", ..." if len(bad) > 5 else "",
            )
            return
        atomic_torch_save(checkpoint, path)
