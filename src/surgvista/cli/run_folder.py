"""Hydra callback of ``train.py`` / ``eval.py`` (``conf/hydra/default.yaml``, ``hydra.callbacks.run_folder``): the run
folder is checked before Hydra creates it."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from surgvista.cli.common import user_errors
from surgvista.utils.preflight import check_output_folder


class RunFolderCheck(Callback):
    """Before Hydra creates the run folder (``hydra.run.dir``, or a sweep's ``hydra.sweep.dir``): one ``error:`` line
    and exit status 1 when it lies under a file or in a folder that cannot be written (Hydra's own ``mkdir`` would
    end in a traceback)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_run_folder(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_run_folder(config, "hydra.sweep.dir")


def check_run_folder(config: DictConfig, key: str) -> None:
    """:func:`~surgvista.utils.preflight.check_output_folder` on the folder at ``key`` (a bad one: exit 1)."""
    folder = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
    if folder:
        with user_errors():
            check_output_folder(str(folder), key)
