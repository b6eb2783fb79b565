"""Per-optimiser-step learning-rate schedule of the reference."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from surgvista.utils.errors import ConfigError

log = logging.getLogger(__name__)


def warmup_cosine(base: float, final: float, total_steps: int, warmup_steps: int, start: float = 0.0) -> np.ndarray:
    """``linspace(start, base, warmup_steps)`` then ``final + ½(base−final)(1+cos(π i/L))`` for ``i < L``.

    Both warm-up endpoints are included, so step 0 is ``start`` and step ``warmup_steps−1`` is ``base``;
    the cosine never quite reaches ``final``. Length ``total_steps``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    warmup = np.linspace(start, base, warmup_steps)
    iters = np.arange(total_steps - warmup_steps)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    return np.concatenate([warmup, cosine])


def adamw_warmup_cosine(
    groups: list[dict],
    trainer: L.Trainer,
    samples_per_step: int,
    base_lr: float,
    min_lr: float,
    lr_scale_batch: int,
    warmup_epochs: float,
    betas: Sequence[float],
    eps: float,
    optimizer_cls: type | None = None,
) -> dict:
    """AdamW over ``groups`` with the reference's per-step schedule, as a Lightning optimiser config.

    ``lr = base_lr × global_batch / lr_scale_batch`` (``min_lr`` scaled alike) with ``global_batch =
    samples_per_step × accumulate × world``; a group with an ``lr_scale`` (layer decay) gets ``lr × lr_scale``.
    Linear warm-up over ``warmup_epochs`` epochs then cosine, sized from ``trainer.estimated_stepping_batches``.
    The AdamW is the fused one (device-side step skipping, :mod:`surgvista.modules.nonfinite`) unless
    ``optimizer_cls`` (same arguments, no ``fused``) is given.
    """
    global_batch = samples_per_step * trainer.accumulate_grad_batches * trainer.world_size
    lr = base_lr * global_batch / lr_scale_batch
    min_lr = min_lr * global_batch / lr_scale_batch
    total = int(trainer.estimated_stepping_batches)
    if total <= 0:
        raise ConfigError(
            f"no optimiser step to schedule ({trainer.num_training_batches} training batch(es) per epoch, "
            f"max_epochs={trainer.max_epochs}): the training set is smaller than one batch of "
            f"data.batch_size={samples_per_step} clips (the last partial batch is dropped); lower data.batch_size"
        )
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    steps_per_epoch = total / epochs if epochs else total
    warmup = int(round(warmup_epochs * steps_per_epoch))
    schedule = warmup_cosine(lr, min_lr, total, warmup)
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    log.info(
        "global batch %d → lr %.3g (min %.3g); %d optimiser steps, %d warm-up", global_batch, lr, min_lr, total, warmup
    )
    # fused: its kernel honours `optimizer.found_inf`, which the non-finite guard uses to skip a step on the device.
    if optimizer_cls is None:
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)
    else:  # e.g. a probe grid's GridAdamW (it honours found_inf too)
        optimizer = optimizer_cls(groups, lr=lr, betas=tuple(betas), eps=eps)
    last = len(schedule) - 1
    factor = schedule / lr if lr > 0 else schedule * 0
    scheduler = LambdaLR(optimizer, lambda step: float(factor[min(step, last)]))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
