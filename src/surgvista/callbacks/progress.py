"""The console progress bar: Lightning's rich bar, lr in scientific notation, metrics read on logging steps only."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes its loggers after this training batch (``log_every_n_steps``; the same private
    check ``LearningRateMonitor`` uses). Values read on the host only then keep the other steps free of syncs."""
    connector = getattr(trainer, "_logger_connector", None)
    return connector is None or bool(connector.should_update_logs)


def show_on_bar(module: L.LightningModule, **values) -> None:
    """Per-step ``values`` for :class:`ProgressBar`, kept on logging steps only and read there. Not ``self.log(...,
    prog_bar=True)``: Lightning reads every such metric on the host after every batch (a device sync), and a logged
    Python float becomes a blocking host-to-device copy. Loggers get the values through the module's own logs."""
    if is_logging_step(module.trainer):
        module.bar_metrics = values


class ProgressBar(RichProgressBar):
    """``RichProgressBar`` that reads metrics (a device sync each) on logging steps only, not after every batch,
    adds the module's :func:`show_on_bar` values, and shows ``lr`` and ``lr-*`` as ``2.50e-03``, not ``0.003``."""

    _metrics_due = True

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        self._metrics_due = is_logging_step(trainer)
        try:
            super().on_train_batch_end(trainer, *args, **kwargs)
        finally:
            self._metrics_due = True

    def _update_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._metrics_due:
            super()._update_metrics(trainer, pl_module)

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.update({k: float(v) for k, v in getattr(pl_module, "bar_metrics", {}).items()})  # see show_on_bar
        return {k: f"{v:.2e}" if k.split("/")[-1].startswith("lr") and isinstance(v, float) else v
                for k, v in items.items()}  # fmt: skip
