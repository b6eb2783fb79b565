"""W&B dashboards that need no clicking (``docs/benchmark.md#wb-dashboards``).

* :func:`sweep_group` and :func:`job_type`: the W&B ``group`` of a ``-m`` sweep (its folder) and the ``job_type`` of
  a run (``pretrain`` / ``finetune`` / ``probe`` / ``tecno`` / ``eval``), filled in by ``run.py`` when the logger
  config leaves them empty;
* :class:`WandbSummary`: added by ``run.py`` whenever a ``WandbLogger`` is active. Every validation metric gets a
  ``define_metric`` summary (``max`` for scores, ``min`` for losses, :func:`metric_goal`) and ``best/<metric>``,
  ``best/<metric>_step``, ``best/<metric>_epoch`` in the run summary; after a test, the evaluation's
  ``per_video.csv`` and ``ci.json`` become the tables ``test/per_video`` and ``test/ci``.

The step axis is Lightning's ``trainer/global_step`` (``WandbLogger`` defines it for every metric).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

STEP = "trainer/global_step"  # the x-axis WandbLogger defines for every metric
SELECTED = ("val/",)  # metrics whose best value is kept (monitored for checkpoint selection)
MIN_WORDS = ("loss", "error", "nll")  # lower is better
MAX_WORDS = ("acc", "top", "f1", "jaccard", "map", "precision", "recall", "edit", "auc", "dice", "iou", "knn")
SKIP_WORDS = ("_std", "_lo", "_hi", "std", "momentum", "lr", "epoch")  # spreads and settings: no best value
GROUP_CHARS = 128  # W&B's limit on a group name
# Stage of a LightningModule by the module that defines it (run.py's job_type when the logger sets none).
JOB_TYPES = {
    "surgvista.modules.pretrain": "pretrain",
    "surgvista.modules.finetune": "finetune",
    "surgvista.modules.tecno": "tecno",
}


def metric_goal(name: str) -> str | None:
    """``"min"`` for a loss, ``"max"`` for a score (accuracy, F1, Jaccard, mAP, top-k, ...), ``None`` otherwise (a
    spread, a setting: only the last value matters)."""
    leaf = name.rsplit("/", 1)[-1].lower()
    if any(w in leaf for w in MIN_WORDS):
        return "min"
    if leaf.endswith(SKIP_WORDS) or leaf in SKIP_WORDS:
        return None
    return "max" if any(w in leaf for w in MAX_WORDS) else None


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of every job of one sweep: the sweep folder's last three parts
    (``<task>/multiruns/<date>_<time>`` under the default ``hydra.sweep.dir``), at most 128 characters."""
    return "/".join(Path(sweep_dir).resolve().parts[-3:])[-GROUP_CHARS:]


def job_type(model_target: str, stage: str, probe: bool = False) -> str:
    """``eval`` for ``eval.py``; ``probe`` for a frozen-probe run; else the stage of the module ``model_target``
    (``pretrain``, ``finetune``, ``tecno``; another module: the name of the file that defines it)."""
    if stage == "eval":
        return "eval"
    if probe:
        return "probe"
    module = model_target.rsplit(".", 1)[0]
    return JOB_TYPES.get(module, module.rsplit(".", 1)[-1] or "train")


def number(text: str):
    """A CSV cell as a float when it is one (``nan``/empty → ``None``), else the text."""
    try:
        value = float(text)
    except ValueError:
        return text
    return None if math.isnan(value) else value


def read_csv_table(path: str | Path) -> tuple[list[str], list[list]]:
    """``(columns, rows)`` of a CSV file with a header, numbers as floats (for a ``wandb.Table``)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty CSV file, expected a header row")
    return rows[0], [[number(c) for c in row] for row in rows[1:]]


def ci_rows(path: str | Path) -> tuple[list[str], list[list]]:
    """``(columns, rows)`` of a ``ci.json``: one row ``metric, value, lo, hi`` per headline metric."""
    metrics = json.loads(Path(path).read_text())["metrics"]
    return ["metric", "value", "lo", "hi"], [[k, v.get("value"), v.get("lo"), v.get("hi")] for k, v in metrics.items()]


def logged_step(trainer: L.Trainer) -> int:
    """The ``trainer/global_step`` Lightning logs the current metrics at (during a validation inside an epoch, one
    less than ``trainer.global_step``)."""
    return getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)


class WandbSummary(L.Callback):
    """Best values (with their step) of the validation metrics, and the evaluation's per-video and interval tables,
    in the W&B run of every active ``WandbLogger`` (a no-op without one)."""

    def __init__(self) -> None:
        self.best: dict[str, tuple[float, int, int]] = {}  # name -> (value, step, epoch)
        self.defined: set[str] = set()

    def state_dict(self) -> dict:
        return {"best": {k: list(v) for k, v in self.best.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = {k: tuple(v) for k, v in state_dict.get("best", {}).items()}

    @staticmethod
    def loggers(trainer: L.Trainer) -> list[WandbLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)] if trainer.is_global_zero else []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = self.loggers(trainer)
        if trainer.sanity_checking or not loggers:
            return
        for name, value in trainer.callback_metrics.items():
            goal = metric_goal(name) if name.startswith(SELECTED) and value.numel() == 1 else None
            value = float(value)
            if goal is None or math.isnan(value):
                continue
            if name not in self.defined:  # W&B keeps min/max over the values logged before the definition too
                for lg in loggers:
                    lg.experiment.define_metric(name, step_metric=STEP, summary=goal)
                self.defined.add(name)
            old = self.best.get(name)
            if old is None or (value > old[0] if goal == "max" else value < old[0]):
                self.best[name] = (value, logged_step(trainer), trainer.current_epoch)
        summary = {}
        for name, (value, step, epoch) in self.best.items():
            summary |= {f"best/{name}": value, f"best/{name}_step": step, f"best/{name}_epoch": epoch}
        for lg in loggers:
            lg.experiment.summary.update(summary)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = self.loggers(trainer)
        out = Path(pl_module.hparams.get("output_dir") or trainer.default_root_dir) / "test"
        tables = {"test/per_video": (out / "per_video.csv", read_csv_table), "test/ci": (out / "ci.json", ci_rows)}
        for key, (path, read) in tables.items():
            if not loggers or not path.is_file():
                continue
            columns, rows = read(path)
            for lg in loggers:
                lg.log_table(key, columns=columns, data=rows, step=trainer.global_step)
            log.info("W&B table %s: %s (%d rows)", key, path, len(rows))
