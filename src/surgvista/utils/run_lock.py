"""One run per folder: ``<run>/.surgvista.lock`` (host, pid, start time, command, SLURM job), created atomically
(``O_CREAT | O_EXCL``) before a run writes anything there and removed when it ends, on errors too.

A second run on a locked folder stops with one line naming the folder and the run that holds it. A lock left by a
run that was killed is *stale* and taken over with a warning: same host and its pid is no longer alive (or is a
process that started after the lock: a reused pid), or an earlier start of the same requeued SLURM job. A lock of a
live run on another host cannot be checked from here: the error shows its contents and how to remove it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from surgvista.utils.errors import UserError

log = logging.getLogger(__name__)
LOCK_NAME = ".surgvista.lock"
UNREADABLE_GRACE_S = 10.0  # an unreadable lock younger than this may be one being written right now


class RunFolderLockedError(UserError, RuntimeError):
    """The run folder is in use by another run (its lock file is held)."""


@dataclass
class RunLock:
    """A held lock: ``path`` and the ``info`` written into it."""

    path: Path
    info: dict[str, Any]

    def release(self) -> None:
        """Remove the lock file if it is still ours (a taken-over lock belongs to another run now)."""
        if read_lock(self.path) == self.info:
            self.path.unlink(missing_ok=True)


def lock_info() -> dict[str, Any]:
    """What a lock records: host, pid, start time (UTC), the command line and the SLURM job, if any."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
    }


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's contents; ``None`` when it is missing or unreadable."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, from ``/proc``); ``None`` where that is unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _started(holder: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(holder.get("started"))).timestamp()
    except ValueError:
        return None


def _requeued(holder: dict[str, Any]) -> bool:
    """The lock was written by an earlier start of this SLURM job (a requeue counts up ``SLURM_RESTART_COUNT``)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or holder.get("slurm_job_id") != job:
        return False
    return int(holder.get("slurm_restart_count") or 0) < int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def stale_reason(path: Path, holder: dict[str, Any] | None) -> str | None:
    """Why the lock at ``path`` (contents ``holder``) is stale, or ``None`` while its run may still be running."""
    if holder is None:
        age = time.time() - path.stat().st_mtime if path.exists() else UNREADABLE_GRACE_S
        return "unreadable lock file" if age >= UNREADABLE_GRACE_S else None
    if _requeued(holder):
        return f"an earlier start of this requeued SLURM job {holder['slurm_job_id']}"
    here, pid = socket.gethostname(), holder.get("pid")
    if holder.get("host") != here:
        return None
    if not isinstance(pid, int) or pid == os.getpid():
        return f"left by this process (pid {pid})"
    if not pid_alive(pid):
        return f"pid {pid} is no longer running on {here}"
    born, locked_at = process_start(pid), _started(holder)
    if born is not None and locked_at is not None and born > locked_at + 2:  # 2 s: the lock's time is truncated
        return f"pid {pid} on {here} is another process, started after the lock"
    return None


def describe(holder: dict[str, Any]) -> str:
    """``host h, pid p, started t, command c`` of a lock's contents."""
    parts = [f"{k} {holder[k]}" for k in ("host", "pid", "started", "command") if holder.get(k) not in (None, "")]
    return ", ".join(parts)


def _locked_error(folder: Path, path: Path, holder: dict[str, Any] | None) -> RunFolderLockedError:
    if holder is None:
        return RunFolderLockedError(
            f"run folder {folder} is being locked by another run right now ({path}); try again in a few seconds"
        )
    if holder.get("host") == socket.gethostname():
        return RunFolderLockedError(
            f"run folder {folder} is in use by another run ({describe(holder)}); wait for it to end, or give this "
            f"run another folder (hydra.run.dir=...); if pid {holder.get('pid')} is not a run, remove {path}"
        )
    return RunFolderLockedError(
        f"run folder {folder} is locked by a run on another host ({describe(holder)}); if that run is no longer "
        f"running, remove {path} and start again, else give this run another folder (hydra.run.dir=...)"
    )


def _take_over(path: Path, holder: dict[str, Any] | None, why: str) -> None:
    """Move the stale lock aside (only the lock that was read: a rename is atomic) and delete it."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    with contextlib.suppress(OSError):
        os.rename(path, aside)
    if aside.exists():
        if read_lock(aside) != holder:  # another run took it over in between: give it back
            with contextlib.suppress(OSError):
                os.link(aside, path)
        aside.unlink(missing_ok=True)
    what = describe(holder) if holder else "no contents"
    log.warning("run folder %s: taking over the stale lock %s (%s; it held: %s)", path.parent, path, why, what)


def acquire_run_lock(folder: str | Path) -> RunLock:
    """Lock ``folder`` (created if missing) for this run, taking over a stale lock; raise
    :class:`RunFolderLockedError` when another live run holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, info = folder / LOCK_NAME, lock_info()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = read_lock(path)
            why = stale_reason(path, holder)
            if why is None:
                raise _locked_error(folder, path, holder) from None
            _take_over(path, holder, why)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
            f.write("\n")
        return RunLock(path, info)
    raise _locked_error(folder, path, read_lock(path))


@contextlib.contextmanager
def run_folder_lock(folder: str | Path | None) -> Iterator[RunLock | None]:
    """Hold the lock of ``folder`` for the ``with`` block (``None``: no lock, e.g. on a non-zero rank)."""
    lock = acquire_run_lock(folder) if folder is not None else None
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
