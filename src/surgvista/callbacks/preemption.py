"""SLURM preemption and time limits: on the configured signal, save ``last.ckpt`` at the next step boundary,
requeue the job and stop; the requeued job resumes from ``last.ckpt`` by itself (``ckpt_path: auto``).

The handler only sets a flag and the save happens between two steps, where a checkpoint resumes exactly; why this
replaces Lightning's ``SLURMEnvironment`` auto-requeue is in ``docs/fault_tolerance.md``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class Preempted(Exception):  # noqa: N818  (a signal, not an error: train.py returns normally)
    """Raised after the preemption checkpoint is written (and the job requeued): ends ``fit`` at once."""


def slurm_job_id() -> str | None:
    """``<array job>_<task>`` for array jobs, else ``SLURM_JOB_ID`` (``None`` outside SLURM)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def log_this_step(trainer: L.Trainer) -> dict:
    """Send the metrics the module logged in the current training step (``on_step=True``) to every logger now and
    flush them, whatever ``log_every_n_steps`` says. Lightning logs a step only after ``on_train_batch_end``, so
    the step during which a preemption signal arrives would otherwise be in no log. Returns what was logged."""
    connector = trainer._logger_connector  # Lightning has no public "log this step now"
    if trainer._results is None or not trainer.loggers:
        return {}
    metrics = connector.metrics["log"]
    if metrics:
        connector.log_metrics(metrics)  # at this step (the step counter of Lightning's own step logging)
    for logger in trainer.loggers:
        logger.save()
    return dict(metrics)


class PreemptionCallback(Callback):
    """Save-and-requeue on ``signals`` (names such as ``SIGUSR1``; ``sbatch --signal=USR1@120`` sends it 120 s
    before the time limit). ``enabled``: ``auto`` = only in a SLURM batch job, or ``true``/``false``.
    ``requeue``: run ``scontrol requeue <job id>`` (rank 0) after saving."""

    def __init__(self, signals: Sequence[str] = ("SIGUSR1",), enabled: bool | str = "auto", requeue: bool = True):
        if enabled not in (True, False, "auto"):
            raise ValueError(f"callbacks.preemption.enabled must be true, false or auto, got {enabled!r}")
        self.signals = [self._signum(s) for s in signals]
        self.enabled = SLURMEnvironment.detect() if enabled == "auto" else bool(enabled)
        self.requeue = requeue
        self.requested = False
        self.saved: Path | None = None
        self._install()

    @staticmethod
    def _signum(name: str) -> signal.Signals:
        try:
            return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
        except KeyError:
            raise ValueError(f"callbacks.preemption.signals: unknown signal {name!r} (e.g. SIGUSR1, SIGTERM)") from None

    def _install(self) -> None:
        if not self.enabled:
            return
        for signum in self.signals:
            if signal.getsignal(signum) != self._handler:
                signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        log.warning("received %s: saving last.ckpt after the current step, then requeueing", name)
        self.requested = True

    def __getstate__(self) -> dict:  # spawned processes install their own handler in setup()
        return {**self.__dict__, "requested": False}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._install()

    def _agreed(self, trainer: L.Trainer) -> bool:
        """Whether any rank got the signal (one tiny all-reduce per step, only when enabled and distributed)."""
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return self.requested
        flag = torch.tensor([float(self.requested)], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        # Only right after an optimiser step: gradients accumulated so far are not in a checkpoint.
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        at_boundary = stepped or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if not (self.enabled and at_boundary and self._agreed(trainer)):
            return
        cb = trainer.checkpoint_callback
        folder = Path(cb.dirpath) if cb is not None and cb.dirpath else Path(trainer.default_root_dir) / "checkpoints"
        self.saved = folder / "last.ckpt"
        log_this_step(trainer)
        trainer.save_checkpoint(self.saved)
        log.warning("preemption: saved %s at step %d", self.saved, trainer.global_step)
        if self.requeue and trainer.is_global_zero:
            self._requeue()
        raise Preempted(f"preempted at step {trainer.global_step}; resume from {self.saved}")

    @staticmethod
    def _requeue() -> None:
        job = slurm_job_id()
        if job is None:
            log.warning("preemption: not in a SLURM job, nothing to requeue")
            return
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode == 0:
            log.warning("preemption: requeued SLURM job %s", job)
        else:
            log.error(
                "preemption: `scontrol requeue %s` failed (%d): %s", job, result.returncode, result.stderr.strip()
            )
