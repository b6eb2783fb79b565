"""Non-finite safety for training modules: skip bad optimiser steps on the device, stop after K in a row.

A step whose loss or gradient norm is not finite is handed to the fused AdamW as ``optimizer.found_inf`` (the
``torch.amp.GradScaler`` mechanism), with no host read per step; the policy is in ``docs/fault_tolerance.md``.
"""

from __future__ import annotations

import logging
import os

import lightning as L
import torch

log = logging.getLogger(__name__)


def total_grad_norm(grads: list[torch.Tensor], plain_sharded: bool = False) -> torch.Tensor:
    """Total L2 norm of ``grads`` (``torch.nn.utils.get_total_norm``, DTensor-aware: FSDP2 shards are reduced over
    their mesh); plain tensors are summed over all ranks too when ``plain_sharded`` (FSDP1 ``use_orig_params``
    shards, disjoint across ranks)."""
    from torch.distributed.tensor import DTensor

    plain = [g.float() for g in grads if not isinstance(g, DTensor)]
    sharded = [g.float() for g in grads if isinstance(g, DTensor)]
    sq = []
    if plain:
        part = torch.nn.utils.get_total_norm(plain).square()
        if plain_sharded:
            torch.distributed.all_reduce(part)
        sq.append(part)
    if sharded:
        sq.append(torch.nn.utils.get_total_norm(sharded).full_tensor().square())
    return torch.stack(sq).sum().sqrt()


def mark_nonfinite_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    grad_norm: torch.Tensor | None,
    skipped: torch.Tensor,
    consecutive: torch.Tensor,
    distributed: bool = False,
) -> torch.Tensor:
    """Device work only, no host sync: ``bad = not finite(loss) or not finite(grad_norm)`` (the max over ranks when
    ``distributed``) becomes ``optimizer.found_inf`` (the fused AdamW then skips the update) and updates the
    ``skipped`` / ``consecutive`` counters in place. Returns ``bad`` (0. or 1.)."""
    bad = ~torch.isfinite(loss)
    if grad_norm is not None:
        bad = bad | ~torch.isfinite(grad_norm.to(loss.device))
    bad = bad.float()
    if distributed:
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)  # every rank skips alike
    found = getattr(optimizer, "found_inf", None)
    if isinstance(found, torch.Tensor) and found.device == bad.device:
        found.copy_(bad)
    else:
        optimizer.found_inf = bad.clone()
    skipped.add_(bad)
    consecutive.mul_(bad).add_(bad)
    return bad


class NonFiniteGuardMixin(L.LightningModule):
    """Per-step non-finite handling shared by the pre-training and fine-tuning modules.

    Subclasses call :meth:`_init_guard` in ``__init__``, :meth:`_remember_loss` in ``training_step`` and
    :meth:`_guard_step` in ``on_before_optimizer_step`` (after any gradient edits), and use a fused AdamW.
    ``max_consecutive_nonfinite``: K; ``nonfinite_check_every``: how often the host reads the counters (``None``:
    ``trainer.log_every_n_steps``).
    """

    def _init_guard(self, max_consecutive: int, check_every: int | None) -> None:
        if max_consecutive < 1:
            raise ValueError(f"model.max_consecutive_nonfinite must be >= 1, got {max_consecutive}")
        if check_every is not None and check_every < 1:
            raise ValueError(f"model.nonfinite_check_every must be >= 1 or null, got {check_every}")
        self._guard_max, self._guard_every = max_consecutive, check_every
        self._step_loss: torch.Tensor | None = None
        self._skipped: torch.Tensor | None = None  # device counters: skipped steps, bad steps in a row
        self._consecutive: torch.Tensor | None = None
        self._loaded_counts = (0, 0)

    def _remember_loss(self, loss: torch.Tensor) -> None:
        self._step_loss = loss.detach()

    def _guard_step(self, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor | None) -> None:
        """Mark this optimiser step bad (``optimizer.found_inf``) where the loss or ``grad_norm`` is not finite."""
        if self._step_loss is None:
            return
        device = self._step_loss.device
        if self._skipped is None or self._skipped.device != device:
            self._skipped = torch.tensor(float(self._loaded_counts[0]), device=device)
            self._consecutive = torch.tensor(float(self._loaded_counts[1]), device=device)
        distributed = torch.distributed.is_initialized() and self.trainer.world_size > 1
        mark_nonfinite_step(optimizer, self._step_loss, grad_norm, self._skipped, self._consecutive, distributed)
        self.log("train/skipped_steps", self._skipped, on_step=True, on_epoch=False)
        self._step_loss = None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self._guard_every or max(1, self.trainer.log_every_n_steps)
        if self._consecutive is None or self.global_step % every:
            return
        consecutive = int(self._consecutive.item())  # the one host sync, every `every` steps
        if consecutive >= self._guard_max:
            where = self._restore_last_finite()
            raise FloatingPointError(
                f"{consecutive} optimiser steps in a row up to step {self.global_step} had a non-finite loss or "
                f"gradient norm (model.max_consecutive_nonfinite={self._guard_max}); their updates were skipped. "
                f"{where} Lower the learning rate (model.base_lr) or check the data, then resume."
            )

    def _restore_last_finite(self) -> str:
        """Load the weights of the newest checkpoint written (or resumed from) back into memory; say which."""
        trainer = self.trainer
        paths = [getattr(cb, "last_model_path", "") for cb in trainer.checkpoint_callbacks] + [trainer.ckpt_path]
        existing = [p for p in paths if p and os.path.exists(p)]
        if not existing:
            return "No checkpoint was written yet: the weights in memory are those of the last finite step."
        path = max(existing, key=os.path.getmtime)  # all checkpoints on disk are finite (checked before writing)
        checkpoint = trainer.strategy.load_checkpoint(path)
        trainer.strategy.load_model_state_dict(checkpoint, strict=False)
        log.error("non-finite training: restored the weights of %s in memory", path)
        return f"The weights in memory were restored from the last finite checkpoint {path}."

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        skipped, consecutive = self._loaded_counts
        if self._skipped is not None:
            skipped, consecutive = int(self._skipped.item()), int(self._consecutive.item())
        checkpoint["nonfinite_guard"] = {"skipped_steps": skipped, "consecutive": consecutive}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("nonfinite_guard") or {}
        self._loaded_counts = (int(state.get("skipped_steps", 0)), int(state.get("consecutive", 0)))
        self._skipped = self._consecutive = None
