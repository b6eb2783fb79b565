"""The console progress bar: Lightning's rich bar with learning rates in scientific notation."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """``RichProgressBar`` that shows ``lr`` (and ``lr-*`` from LearningRateMonitor) as ``2.50e-03``, not ``0.003``."""

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        return {k: f"{v:.2e}" if k.split("/")[-1].startswith("lr") and isinstance(v, float) else v
                for k, v in items.items()}  # fmt: skip
