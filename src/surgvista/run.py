"""What train.py and eval.py do with a composed Hydra config."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path

import lightning as L
import rich
import rich.syntax
import rich.tree
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf, open_dict

from surgvista.callbacks.preemption import Preempted
from surgvista.callbacks.wandb_summary import WandbSummary, job_type, sweep_group
from surgvista.checkpoints.geometry import OVERRIDE, check_geometry
from surgvista.checkpoints.run_folder import check_run_checkpoint, check_run_folder_owner
from surgvista.utils.config_check import check_config
from surgvista.utils.errors import ConfigError, find_user_error
from surgvista.utils.io import atomic_write_text, clean_orphaned_temp_files
from surgvista.utils.preflight import check_ckpt_path, check_output_folder, checkpoint_bytes, warn_if_low_disk
from surgvista.utils.run_lock import run_folder_lock

log = logging.getLogger(__name__)
PREEMPTED = "preempted"  # train()'s result when the run stopped on the preemption signal (saved, requeued)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry with a ``_target_`` of a callbacks/logger group (``None`` → empty)."""
    if not group:
        return []
    if not isinstance(group, DictConfig):
        raise TypeError(f"expected a config group mapping names to configs, got {type(group).__name__}")
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


@rank_zero_only
def print_config(cfg: DictConfig, order=("data", "model", "callbacks", "logger", "trainer", "paths")) -> None:
    """Print the composed config as a rich tree (resolving what can be resolved)."""
    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=False) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


def task_wrapper(task: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict]:
    """Log failures and always close the W&B run, so one failing job does not poison a multirun."""

    @wraps(task)
    def wrapped(cfg: DictConfig) -> dict:
        try:
            return task(cfg)
        except Exception as e:
            if find_user_error(e) is None:  # a user error is printed as one line by the entry point
                log.exception("task failed")
            raise
        finally:
            wandb = sys.modules.get("wandb")  # imported only by a W&B logger: nothing to close otherwise
            if wandb is not None and wandb.run is not None:
                wandb.finish()

    return wrapped


class _NoTips(logging.Filter):
    """Drops Lightning's advertising ("💡 Tip: ... litlogger / litmodels") from every run's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_NoTips())


def apply_extras(cfg: DictConfig) -> None:
    """lightning-hydra-template ``extras``: ``ignore_warnings`` silences Python warnings, ``enforce_tags`` refuses a
    run without ``tags``."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        log.info("extras.ignore_warnings: Python warnings are silenced")
        warnings.filterwarnings("ignore")
    if extras.get("enforce_tags") and not cfg.get("tags"):
        raise ConfigError("tags is empty but extras.enforce_tags is true: pass tags=[...] or extras.enforce_tags=false")


def log_hyperparameters(loggers: list, cfg: DictConfig, model: L.LightningModule) -> None:
    """Send the resolved config (nested) and the parameter counts to every logger, once per run (the modules save
    their hyperparameters with ``logger=False``, so Lightning adds no flat duplicate)."""
    hparams = OmegaConf.to_container(cfg, resolve=True)
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    hparams["params"] = {"total": total, "trainable": trainable, "non_trainable": total - trainable}
    for lg in loggers:
        lg.log_hyperparams(hparams)


def preflight(cfg: DictConfig) -> None:
    """Everything checked on the composed config before any file is written or anything built: the knobs, the
    interpolations, Lightning's choices, ``ckpt_path`` and the run folder (one :class:`ConfigError` each)."""
    check_config(cfg)
    check_ckpt_path(cfg.get("ckpt_path"))
    output_dir = OmegaConf.select(cfg, "paths.output_dir", default=None, throw_on_resolution_failure=False)
    if output_dir:
        check_output_folder(output_dir, "paths.output_dir")


def _setup(cfg: DictConfig):
    apply_extras(cfg)
    if cfg.get("print_config"):
        print_config(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    # Plain Python containers in hparams, so checkpoints load with torch.load(weights_only=True).
    datamodule = instantiate(cfg.data, _convert_="all")
    if hasattr(datamodule, "check_inputs"):  # manifests, media and leakage before a (slow) model is built
        datamodule.check_inputs()
    model = instantiate(cfg.model, _convert_="all")
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = instantiate_group(cfg.get("callbacks"))
    if any(isinstance(lg, WandbLogger) for lg in loggers):  # best values, per-video tables (docs/benchmark.md)
        callbacks.append(WandbSummary())
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def fill_wandb_fields(cfg: DictConfig, stage: str) -> None:
    """Give every W&B logger config without a ``group`` the sweep folder (``-m`` jobs only: all jobs of one sweep
    share it) and without a ``job_type`` the run's stage (``eval`` for ``stage="eval"``, else from the model)."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    sweep = hydra is not None and hydra.mode == RunMode.MULTIRUN
    for node in (cfg.get("logger") or {}).values():
        if not isinstance(node, DictConfig) or not str(node.get("_target_", "")).endswith("WandbLogger"):
            continue
        with open_dict(node):
            if not node.get("group") and sweep:
                node.group = sweep_group(hydra.sweep.dir)
            if not node.get("job_type"):
                node.job_type = job_type(str((cfg.get("model") or {}).get("_target_", "")), stage, "probe_name" in cfg)


def metric_value(metrics: dict, name: str | None) -> float | None:
    """``metrics[name]`` as a float for sweepers; a clear error if the metric was never logged."""
    if not name or PREEMPTED in metrics:  # a preempted job reports nothing: its requeued run will
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name!r} was not logged; available: {sorted(metrics)}")
    return float(metrics[name])


@task_wrapper
def train(cfg: DictConfig) -> dict:
    """Lock the run folder, instantiate data/model/trainer, check a checkpoint to resume, save the config, fit (and
    test); return the callback metrics. A folder of another run is refused before anything is written."""
    preflight(cfg)
    files = hydra_files(cfg)
    with owned_run_folder(cfg) as out_dir:
        fill_wandb_fields(cfg, "fit")
        datamodule, model, trainer = _setup(cfg)
        cb = trainer.checkpoint_callback
        ckpt_dir = Path(cb.dirpath) if cb is not None and getattr(cb, "dirpath", None) else None
        if rank_zero_only.rank == 0:
            warn_if_low_disk(ckpt_dir or out_dir, checkpoint_bytes(list(model.parameters())))
        if ckpt_dir is not None and rank_zero_only.rank == 0:
            clean_orphaned_temp_files(ckpt_dir)
        ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), ckpt_dir) if cfg.get("train", True) else None
        if ckpt_path and str(ckpt_path) not in ("last", "best", "hpc", "registry"):  # Lightning's own names
            check_run_checkpoint(ckpt_path, model, "ckpt_path")
        save_run_config(cfg, out_dir, files)  # after the checks: a refused resume leaves the run's config as it was
        log_hyperparameters(trainer.loggers, cfg, model)  # the loggers' first files, after the checks too
        if cfg.get("train", True):
            if cfg.get("seed") is not None:
                # Distributed strategies re-seed at setup (Lightning's reset_seed); do the same here so a
                # single-process run sees the same data order and augmentations as rank 0 of a multi-process run.
                L.seed_everything(cfg.seed, workers=True, verbose=False)
            try:
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            except Preempted as stop:  # last.ckpt is saved and the job requeued: end this process cleanly
                log.warning("%s", stop)
                return {PREEMPTED: 1.0}
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test"):  # testing replaces the callback metrics: keep the fit ones (optimized_metric) too
            ckpt = _selected_ckpt(trainer, cfg.get("test_ckpt", "best"))
            trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)  # the module prints its table
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        _report(trainer, out_dir)
    return metrics


@contextmanager
def owned_run_folder(cfg: DictConfig) -> Iterator[Path]:
    """The run folder ``paths.output_dir``, held for the ``with`` block. On rank 0 it is refused when it holds a
    run of another kind (training, evaluation), task or model, then locked (``<run>/.surgvista.lock``,
    :mod:`surgvista.utils.run_lock`) until the run ends, also on errors; other ranks share rank 0's folder."""
    out_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank != 0:
        yield out_dir
        return
    check_run_folder_owner(out_dir, cfg)
    with run_folder_lock(out_dir):
        yield out_dir


def hydra_files(cfg: DictConfig) -> dict[str, str]:
    """What Hydra writes to ``<run>/.hydra/`` (config, hydra, overrides), for :func:`save_run_config` to write once
    the folder is checked and locked: our ``hydra.output_subdir`` is null, so Hydra writes nothing before the task
    starts. Empty outside a Hydra app, or when ``hydra.output_subdir`` is set (Hydra wrote them itself)."""
    if not HydraConfig.initialized():
        return {}
    hydra = HydraConfig.get()
    if hydra.get("output_subdir") is not None:
        return {}
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra})),
        "overrides.yaml": OmegaConf.to_yaml(hydra.overrides.task),
    }


def save_run_config(cfg: DictConfig, out_dir: Path, files: dict[str, str] | None = None) -> Path:
    """Write the resolved ``<run>/config.yaml`` and ``files`` (:func:`hydra_files`) under ``<run>/.hydra/``, each
    atomically (rank 0); returns ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        for name, text in (files or {}).items():
            atomic_write_text(out_dir / ".hydra" / name, text)
    return out_dir


def resolve_ckpt_path(value: str | None, ckpt_dir: Path | None) -> str | None:
    """``ckpt_path=auto``: ``<checkpoint dir>/last.ckpt`` when it exists (a requeued or restarted job resumes by
    itself), else ``None`` (a fresh start); any other value is returned unchanged."""
    if value != "auto":
        return value
    last = ckpt_dir / "last.ckpt" if ckpt_dir is not None else None
    if last is not None and last.exists():
        log.info("ckpt_path=auto: resuming from %s", last)
        return str(last)
    log.info("ckpt_path=auto: no last.ckpt in %s, starting from scratch", ckpt_dir)
    return None


def _selected_ckpt(trainer: L.Trainer, which: str) -> str | None:
    """Checkpoint to test after fitting: ``best`` (monitored) or ``last`` (the weights in memory)."""
    if which not in ("best", "last"):
        raise ValueError(f"test_ckpt must be 'best' or 'last', got {which!r}")
    cb = trainer.checkpoint_callback
    if which == "best" and cb is not None and cb.monitor and cb.best_model_path:
        log.info("testing the best checkpoint (%s = %s): %s", cb.monitor, cb.best_model_score, cb.best_model_path)
        return cb.best_model_path
    if which == "best":
        log.warning("test_ckpt=best but no monitored checkpoint was saved: testing the last-epoch weights")
    return None


@task_wrapper
def evaluate(cfg: DictConfig) -> dict:
    """Evaluate the checkpoint ``cfg.ckpt_path``: ``trainer.test`` for modules with a ``test_step`` (fine-tuning:
    writes predictions and metric tables), otherwise ``trainer.validate`` (pre-training); return its metrics. The
    eval run's own folder is locked and its ``config.yaml`` (naming the checkpoint) written after the checks."""
    preflight(cfg)
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.exists():  # a file, or a sharded checkpoint folder
        raise FileNotFoundError(f"ckpt_path not found: {ckpt}")
    geometry = check_geometry(ckpt, cfg, bool(cfg.get(OVERRIDE, False)))  # clips shaped as in training
    files = hydra_files(cfg)
    with owned_run_folder(cfg) as out_dir:
        fill_wandb_fields(cfg, "eval")
        datamodule, model, trainer = _setup(cfg)
        check_run_checkpoint(ckpt, model, "ckpt_path")
        save_run_config(cfg, out_dir, files)
        _write_geometry(out_dir, geometry)
        log_hyperparameters(trainer.loggers, cfg, model)
        test = is_overridden("test_step", model, L.LightningModule)  # fine-tuned modules print their own table
        log.info("evaluating %s", ckpt.resolve())
        run = trainer.test if test else trainer.validate
        results = run(model, datamodule=datamodule, ckpt_path=str(ckpt), verbose=not test)
        _report(trainer, out_dir)
    return {k: float(v) for r in results for k, v in r.items()}


@rank_zero_only
def _write_geometry(out_dir: Path, record: dict) -> None:
    """``<eval run>/geometry.json``: the data geometry evaluated, the one trained with, and what changed."""
    atomic_write_text(out_dir / "geometry.json", json.dumps(record, indent=1, default=str) + "\n")


@rank_zero_only
def _report(trainer: L.Trainer, out_dir: Path) -> None:
    lines = [f"Run directory:    {out_dir}"]
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None and ckpt_cb.dirpath:
        lines.append(f"Checkpoints:      {ckpt_cb.dirpath} (last: {ckpt_cb.last_model_path or '-'})")
    for lg in trainer.loggers:
        metrics = Path(lg.log_dir or "") / "metrics.csv"
        if metrics.is_file():
            lines.append(f"Metrics:          {metrics}")
    for recon in (out_dir / "train_reconstruction", out_dir / "val_reconstruction"):
        if recon.is_dir():
            lines.append(f"Reconstructions:  {recon} ({len(list(recon.glob('*.png')))} images)")
    log.info("\n".join(lines))
