"""Callbacks that the fault-tolerance tests inject into ``train.py`` subprocesses (``+callbacks.x._target_=...``)."""

from __future__ import annotations

import os
import signal
import time

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """``SIGKILL`` this process (every rank) just before optimiser step ``step``: a crash with no chance to clean up."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAtStep(Callback):
    """Just before optimiser step ``step``, touch ``marker`` and sleep ``seconds``: a window in which the test sends
    this process a signal, as SLURM would at any moment of a step."""

    def __init__(self, step: int, marker: str, seconds: float = 20.0) -> None:
        self.step, self.marker, self.seconds = step, marker, seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            open(self.marker, "w").close()
            time.sleep(self.seconds)
