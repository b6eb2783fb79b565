"""A run's paths and free disk, checked before work starts: ``ckpt_path`` is a checkpoint file (or a sharded
checkpoint folder), the run folder can be created and written, the disk holds about one checkpoint (a warning with
the numbers otherwise); and the one-line error of a write that fails because the disk is full."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from surgvista.utils.errors import ConfigError, DiskFullError

log = logging.getLogger(__name__)

LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself
SHARDED_MARKERS = ("meta.pt", ".metadata")  # files of a sharded (distributed) checkpoint folder
ADAM_STATES = 2  # fp32 moments per trainable parameter in the optimiser state of a checkpoint
NEARLY_FULL = 64 << 20  # free bytes under which a failed write is put down to a full disk


def human_bytes(n: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def existing_ancestor(path: str | Path) -> Path:
    """``path`` itself when it exists, else its nearest existing parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_space(path: str | Path) -> int:
    """Free bytes (for this user) on the filesystem that holds, or will hold, ``path``."""
    return shutil.disk_usage(existing_ancestor(path)).free


def check_ckpt_path(value: object, key: str = "ckpt_path") -> None:
    """A ``ckpt_path`` that names a folder must be a sharded checkpoint (``meta.pt`` / ``.metadata`` inside): a
    plain folder is refused with one line (Lightning would end in ``IsADirectoryError``)."""
    if not isinstance(value, (str, Path)) or str(value) in ("auto", *LIGHTNING_CKPT_NAMES):
        return
    path = Path(value)
    if path.is_dir() and not any((path / m).exists() for m in SHARDED_MARKERS):
        ckpts = sorted(p.name for p in path.glob("*.ckpt"))[:3] or sorted(p.name for p in path.glob("*/*.ckpt"))[:3]
        hint = f" (it holds {', '.join(ckpts)})" if ckpts else ""
        raise ConfigError(
            f"{key}={path}: a folder, not a checkpoint file{hint}; expected a .ckpt file such as "
            f"<run>/checkpoints/last.ckpt"
        )


def check_output_folder(path: str | Path, key: str) -> None:
    """The run folder ``path`` exists as a writable folder or can be created: its nearest existing ancestor is a
    folder (not a file) that this process may write."""
    anc = existing_ancestor(path)
    if not anc.is_dir():
        raise ConfigError(f"{key}={path}: {anc} is a file, expected a folder (set {key} or paths.log_dir to a folder)")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {anc} is not writable; set {key} (or paths.log_dir) to a writable folder")


def checkpoint_bytes(parameters: list) -> int:
    """About the size of one checkpoint of a model with these parameters: every weight at its own width, plus
    ``ADAM_STATES`` fp32 optimiser moments per trainable weight."""
    weights = sum(p.numel() * p.element_size() for p in parameters)
    states = sum(p.numel() * 4 * ADAM_STATES for p in parameters if p.requires_grad)
    return weights + states


def warn_if_low_disk(folder: str | Path, needed: int) -> bool:
    """Log a warning with the numbers when ``folder``'s filesystem has less free space than ``needed`` bytes (one
    checkpoint); returns whether it warned."""
    free = free_space(folder)
    if free >= needed:
        return False
    log.warning(
        "low disk space: %s free on the filesystem of %s, but one checkpoint needs about %s; the first checkpoint "
        "write may fail (free space or set paths.log_dir / hydra.run.dir elsewhere)",
        human_bytes(free),
        folder,
        human_bytes(needed),
    )
    return True


def disk_full_error(exc: BaseException, path: str | Path, written: int = 0) -> DiskFullError | None:
    """The one-line error for a write of ``path`` that failed for lack of space (``ENOSPC``/``EDQUOT``, or a
    writer's own error, such as torch's "unexpected pos", on a filesystem left nearly full); else ``None``."""
    path = Path(path)
    free = free_space(path.parent)
    no_space = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not no_space and not (isinstance(exc, (OSError, RuntimeError)) and free < NEARLY_FULL):
        return None
    part = f" after {human_bytes(written)}" if written else ""
    return DiskFullError(
        f"{path}: disk full, the write failed{part} ({human_bytes(free)} free on {existing_ancestor(path.parent)}); "
        "free some space or write the run elsewhere (paths.log_dir / hydra.run.dir)"
    )
