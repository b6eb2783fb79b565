"""``HealthMonitor``: cheap representation-collapse monitors for pre-training (``conf/callbacks/health.yaml``).

Every ``every_n_steps`` optimiser steps the monitor asks the module for the pooled features of the clips of the
current batch (``pl_module.health_features(batch) -> (B, D)``) and logs their spread (``health/feature_std``), their
effective rank (``health/effective_rank``, ``health/effective_rank_fraction``) and the mean cosine similarity of
different clips (``health/cosine_similarity``), next to the module's latent loss, target std and EMA momentum. A
signal that stays past its threshold for ``patience`` checks in a row is reported once, as one warning; with
``stop_on_collapse`` the run stops and the last checkpoint written before the signal appeared is kept. The
signals, their thresholds and what to do: ``docs/objectives.md#monitors``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from surgvista.utils.errors import ConfigError, UserError

log = logging.getLogger(__name__)

DOCS = "docs/objectives.md#monitors"
# What the module logs and the monitor re-logs under health/ (read from trainer.callback_metrics, never computed).
MODULE_METRICS = ("train/loss_latent", "train/target_std", "train/ema_momentum")
ADVICE = {
    "feature_std": "the clips' pooled features hardly differ any more (std collapse)",
    "effective_rank": "the clips' pooled features span only a few directions (dimensional collapse)",
    "cosine_similarity": "the pooled features of different clips point the same way (collapse to one vector)",
    "target_collapse": "the latent loss falls only because the targets lose their variance (target collapse)",
}
# ModelCheckpoint settings that, while held, make it write nothing (restored on release).
HELD = (("save_top_k", 0), ("save_last", False), ("save_on_exception", False))
REMEDY = (
    "Lower the learning rate (model.base_lr) or lengthen the warm-up, raise the EMA momentum of the target "
    "encoder, check health/target_std, then resume from the last good checkpoint"
)


class CollapseError(UserError, RuntimeError):
    """Raised (on every rank) when ``stop_on_collapse`` is set and a collapse signal fires; ``train.py`` reports it
    as one ``error: ...`` line (exit 1). No checkpoint is written after the signal appeared."""


def effective_rank(centred: torch.Tensor, scale: float | None = None) -> float:
    """``exp(entropy(σ / Σσ))`` of the singular values ``σ`` of ``centred`` (Roy & Vetterli 2007).

    Singular values below ``max(B, D) · eps · scale`` (``scale``: the Frobenius norm of the uncentred matrix, by
    default that of ``centred``) are rounding noise and dropped; none left (identical rows) gives 0.
    """
    x = centred.float()
    sigma = torch.linalg.svdvals(x)
    reference = float(torch.linalg.matrix_norm(x)) if scale is None else scale
    sigma = sigma[sigma > max(x.shape) * torch.finfo(torch.float32).eps * reference]
    if sigma.numel() == 0:
        return 0.0
    p = sigma / sigma.sum()
    return math.exp(float(-(p * p.log()).sum()))


def feature_stats(features: torch.Tensor) -> dict[str, float]:
    """Collapse statistics of ``features`` (B ≥ 2 clips × D dims, cast to fp32).

    ``feature_std``: the mean over dims of the per-dim standard deviation across clips (ddof 1);
    ``effective_rank`` of the centred matrix and its ``effective_rank_fraction`` of ``min(B, D)``;
    ``cosine_similarity``: the mean cosine similarity of every pair of different clips (the off-diagonal mean).
    """
    x = features.detach().float()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"feature_stats needs a (B >= 2, D) matrix, got shape {tuple(x.shape)}")
    b, d = x.shape
    erank = effective_rank(x - x.mean(dim=0, keepdim=True), float(torch.linalg.matrix_norm(x)))
    unit = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    gram = unit @ unit.T
    cosine = (gram.sum() - gram.diagonal().sum()) / (b * (b - 1))
    return {
        "feature_std": float(x.std(dim=0).mean()),
        "effective_rank": erank,
        "effective_rank_fraction": erank / min(b, d),
        "cosine_similarity": float(cosine),
    }


def _module_metric(metrics: dict, name: str) -> float | None:
    """``name`` from ``trainer.callback_metrics`` (the per-step value when it was also logged per epoch)."""
    value = metrics.get(f"{name}_step", metrics.get(name))
    return None if value is None else float(value)


class HealthMonitor(Callback):
    """Collapse monitors of pre-training; does nothing (one debug line) for a module without ``health_features``.

    Args:
        every_n_steps: check every N optimiser steps (once per step also under gradient accumulation).
        stop_on_collapse: stop the run (:class:`CollapseError`) when a signal fires; while any signal is pending
            (past its threshold, not yet for ``patience`` checks) checkpoints are held, so the last checkpoint on
            disk is the last one written before the signal appeared.
        min_std: ``health/feature_std`` below it is a signal.
        min_rank_fraction: ``health/effective_rank_fraction`` below it is a signal.
        max_cosine: ``health/cosine_similarity`` above it is a signal.
        min_target_std_ratio: target std now / ``patience`` checks ago below it while the latent loss fell too is a
            signal (``health/target_std_ratio``).
        patience: checks in a row a signal must persist before it fires.
    The default thresholds and the reasons for them are in ``docs/objectives.md#monitors``.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        stop_on_collapse: bool = False,
        min_std: float = 0.01,
        min_rank_fraction: float = 0.05,
        max_cosine: float = 0.999,
        min_target_std_ratio: float = 0.5,
        patience: int = 3,
    ) -> None:
        for key, value in (("every_n_steps", every_n_steps), ("patience", patience)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"callbacks.health.{key} must be an integer >= 1, got {value!r}")
        for key, value, low, high in (
            ("min_rank_fraction", min_rank_fraction, 0.0, 1.0),
            ("max_cosine", max_cosine, -1.0, 1.0),
            ("min_target_std_ratio", min_target_std_ratio, 0.0, 1.0),
        ):
            if not low <= value <= high:
                raise ConfigError(f"callbacks.health.{key} must be in [{low}, {high}], got {value!r}")
        if min_std < 0:
            raise ConfigError(f"callbacks.health.min_std must be >= 0, got {min_std!r}")
        self.every_n_steps, self.stop_on_collapse, self.patience = every_n_steps, bool(stop_on_collapse), patience
        self.min_std, self.min_rank_fraction, self.max_cosine = min_std, min_rank_fraction, max_cosine
        self.min_target_std_ratio = min_target_std_ratio
        self.streak = dict.fromkeys(ADVICE, 0)
        self.fired: set[str] = set()
        self.trend: deque[tuple[float, float]] = deque(maxlen=patience + 1)  # (latent loss, target std) per check
        self._active = False
        self._checked_step = -1
        self._held: list[tuple] | None = None
        self._told_small = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._active = callable(getattr(pl_module, "health_features", None))
        if not self._active:
            log.debug("health monitor: %s has no health_features(batch): nothing to monitor", type(pl_module).__name__)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        stepped = stepped or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        step = trainer.global_step
        if not (self._active and stepped and step % self.every_n_steps == 0 and step != self._checked_step):
            return
        self._checked_step = step
        values = self._measure(trainer, pl_module, batch)
        if values is None:
            return
        signals = self._signals(values)
        self._log(trainer, pl_module, values)
        fired = self._update(trainer, signals)
        if self.stop_on_collapse:
            self._hold(trainer, any(self.streak.values()))
            if fired:
                self._stop(trainer, fired)

    # ------------------------------------------------------------------------------------------ measuring
    def _features(self, trainer: L.Trainer, pl_module: L.LightningModule, batch) -> torch.Tensor | None:
        """The pooled features (fp32), gathered over ranks when any rank has fewer than 2 clips."""
        device = pl_module.device
        forked = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])  # training RNG untouched
        with forked, torch.no_grad(), trainer.precision_plugin.forward_context():
            features = pl_module.health_features(batch)
        if not isinstance(features, torch.Tensor) or features.ndim != 2:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise TypeError(f"{type(pl_module).__name__}.health_features(batch) must return pooled (B, D) features, "
                            f"got {got}")
        features = features.detach().float()
        small = features.shape[0] < 2
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(small, all=False):
            features = pl_module.all_gather(features[:1]).reshape(-1, features.shape[-1])  # one clip per rank
        if features.shape[0] < 2:
            if not self._told_small:
                log.info("health monitor: batches of %d clip(s) on one process: skipped", features.shape[0])
                self._told_small = True
            return None
        return features

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule, batch) -> dict[str, float] | None:
        """Rank 0's statistics and module metrics, broadcast so that every rank decides alike."""
        features = self._features(trainer, pl_module, batch)
        values = None
        if features is not None and trainer.is_global_zero:
            values = feature_stats(features)
            metrics = trainer.callback_metrics
            for name in MODULE_METRICS:
                value = _module_metric(metrics, name)
                if value is not None:
                    values[name.replace("train/", "")] = value
        return trainer.strategy.broadcast(values, src=0) if trainer.world_size > 1 else values

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, values: dict[str, float]) -> None:
        """Every value as ``health/<name>``: into ``callback_metrics`` and straight to every logger (rank 0), so
        every check reaches the loggers whatever ``trainer.log_every_n_steps`` is, the last one before a stop too."""
        metrics = {f"health/{k}": v for k, v in values.items()}
        for name, value in metrics.items():
            pl_module.log(name, torch.tensor(value), on_step=True, on_epoch=False, logger=False)
        if trainer.is_global_zero:
            # The step Lightning logs this batch's own metrics at (as LearningRateMonitor does).
            step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    # ------------------------------------------------------------------------------------------ deciding
    def _signals(self, values: dict[str, float]) -> dict[str, tuple[str, float, str, float, bool]]:
        """Per signal: (metric, value, relation, threshold, past the threshold at this check)."""
        out = {
            "feature_std": ("health/feature_std", values["feature_std"], "<", self.min_std),
            "effective_rank": (
                "health/effective_rank_fraction", values["effective_rank_fraction"], "<", self.min_rank_fraction,
            ),
            "cosine_similarity": ("health/cosine_similarity", values["cosine_similarity"], ">", self.max_cosine),
        }
        loss, target_std = values.get("loss_latent"), values.get("target_std")
        if loss is not None and target_std is not None:
            self.trend.append((loss, target_std))
        if len(self.trend) == self.trend.maxlen:
            (loss_then, std_then), (loss_now, std_now) = self.trend[0], self.trend[-1]
            ratio = std_now / std_then if std_then > 0 else 1.0
            values["target_std_ratio"] = ratio
            falling = loss_now < loss_then
            out["target_collapse"] = ("health/target_std_ratio", ratio, "<", self.min_target_std_ratio, falling)
        result = {}
        for name, (metric, value, relation, threshold, *extra) in out.items():
            past = value < threshold if relation == "<" else value > threshold  # NaN is never past
            result[name] = (metric, value, relation, threshold, past and all(extra))
        return result

    def _update(self, trainer: L.Trainer, signals: dict) -> list[str]:
        """Advance the streaks; warn once per signal that reaches ``patience`` (again after a recovery)."""
        fired = []
        for name in ADVICE:
            metric, value, relation, threshold, past = signals.get(name, ("", math.nan, "", math.nan, False))
            if not past:
                if name in self.fired and trainer.is_global_zero:
                    log.info("health monitor: %s recovered at step %d (%s = %.4g)", name, trainer.global_step,
                             metric, value)
                self.streak[name] = 0
                self.fired.discard(name)
                continue
            self.streak[name] += 1
            if self.streak[name] >= self.patience and name not in self.fired:
                self.fired.add(name)
                fired.append(name)
                if trainer.is_global_zero:
                    log.warning("%s", self._message(trainer, name, metric, value, relation, threshold))
        return fired

    def _message(self, trainer: L.Trainer, name: str, metric: str, value: float, relation: str, threshold: float):
        trend = ""
        if name == "target_collapse":
            (loss_then, std_then), (loss_now, std_now) = self.trend[0], self.trend[-1]
            trend = f" (latent loss {loss_then:.4g} -> {loss_now:.4g}, target std {std_then:.4g} -> {std_now:.4g})"
        return (
            f"health monitor: collapse signal '{name}' at step {trainer.global_step}: {metric} = {value:.4g} "
            f"{relation} {threshold:.4g}{trend} for {self.patience} checks in a row (every {self.every_n_steps} "
            f"steps): {ADVICE[name]}. {REMEDY}. See {DOCS}."
        )

    # ------------------------------------------------------------------------------------------ stopping
    def _hold(self, trainer: L.Trainer, hold: bool) -> None:
        """Hold (or release) every ``ModelCheckpoint``: while held it writes nothing, ``last.ckpt`` included."""
        if hold and self._held is None:
            self._held = []
            for cb in trainer.checkpoint_callbacks:
                saved = {key: getattr(cb, key) for key, _ in HELD if hasattr(cb, key)}
                self._held.append((cb, saved))
                for key, off in HELD:
                    if key in saved:
                        setattr(cb, key, off)
            if trainer.is_global_zero:
                pending = ", ".join(name for name, n in self.streak.items() if n)
                log.warning("health monitor: checkpoints held from step %d while %s is past its threshold",
                            trainer.global_step, pending)
        elif not hold and self._held is not None:
            self._release()
            if trainer.is_global_zero:
                log.info("health monitor: signals cleared at step %d: checkpoints resume", trainer.global_step)

    def _release(self) -> None:
        for cb, saved in self._held or []:
            for key, value in saved.items():
                setattr(cb, key, value)
        self._held = None

    def _stop(self, trainer: L.Trainer, fired: list[str]) -> None:
        kept = last_checkpoint(trainer)
        where = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint had been written"
        raise CollapseError(
            f"representation collapse at step {trainer.global_step} ({', '.join(fired)}; "
            f"callbacks.health.stop_on_collapse=true): {where}, nothing was saved after the signal appeared. "
            f"{REMEDY}. See {DOCS}."
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._held is not None and trainer.is_global_zero:
            pending = ", ".join(name for name, n in self.streak.items() if n)
            log.warning("health monitor: training ended while %s was pending: the final state was not checkpointed "
                        "(stop_on_collapse); the last good checkpoint is %s", pending, last_checkpoint(trainer))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release()  # leave the checkpoint callbacks as they were configured

    # ------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"streak": dict(self.streak), "fired": sorted(self.fired), "trend": [list(t) for t in self.trend]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.streak.update({k: int(v) for k, v in state_dict.get("streak", {}).items() if k in self.streak})
        self.fired = set(state_dict.get("fired", [])) & set(ADVICE)
        self.trend.clear()
        self.trend.extend((float(a), float(b)) for a, b in state_dict.get("trend", []))


def last_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint file written by this run's checkpoint callbacks, or the one it resumed from."""
    paths = [getattr(cb, "last_model_path", "") for cb in trainer.checkpoint_callbacks]
    paths += [getattr(cb, "best_model_path", "") for cb in trainer.checkpoint_callbacks]
    existing = [p for p in [*paths, trainer.ckpt_path] if p and os.path.exists(p)]
    return max(existing, key=os.path.getmtime) if existing else None
