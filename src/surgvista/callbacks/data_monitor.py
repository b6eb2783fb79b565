"""``DataMonitor``: how long training steps wait for the data loader, and how many bad samples were skipped."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def _host(value: float) -> torch.Tensor:
    """A host tensor: Lightning logs it as it is, where a Python float becomes a (blocking) copy to the GPU."""
    return torch.tensor(float(value))


class DataMonitor(Callback):
    """Logs ``train/data_wait_pct`` (``docs/data.md``) and ``train/skipped_samples``.

    A step's wait runs from the end of the previous training batch (or the epoch start) to the start of this one
    (loader, host-to-device copy, batch hooks); its total adds its own compute, and ``data_wait_pct = 100 · wait /
    total``; ``train/data_wait_pct_epoch`` is the time-weighted value of an epoch. ``train/skipped_samples`` is the
    running number of samples replaced because of a bad video, from the batches' ``skipped`` counts.
    """

    def __init__(self, log_every_n_steps: int = 1) -> None:
        self.log_every_n_steps = max(1, log_every_n_steps)
        self._mark = self._start = None
        self._wait_sum = self._total_sum = 0.0
        self.skipped = 0
        self.last_pct: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = time.perf_counter()
        self._wait_sum = self._total_sum = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._start = time.perf_counter()
        self._wait = self._start - (self._mark if self._mark is not None else self._start)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        end = time.perf_counter()
        if self._start is None:
            return
        total = self._wait + (end - self._start)
        self._wait_sum += self._wait
        self._total_sum += total
        self.last_pct = 100.0 * self._wait / total if total > 0 else 0.0
        if batch_idx % self.log_every_n_steps == 0:
            pl_module.log("train/data_wait_pct", _host(self.last_pct), on_step=True, on_epoch=False)
        skipped = batch.get("skipped") if isinstance(batch, dict) else None
        if isinstance(skipped, int) and skipped > 0:  # a plain int from collate_clips: no device sync
            self.skipped += skipped
            pl_module.log("train/skipped_samples", _host(self.skipped), on_step=True, on_epoch=False)
        self._mark = time.perf_counter()  # the callbacks' own time counts as neither wait nor compute

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._total_sum > 0:
            pl_module.log("train/data_wait_pct_epoch", 100.0 * self._wait_sum / self._total_sum, on_epoch=True)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
