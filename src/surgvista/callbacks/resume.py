"""Exact resume: every random-number stream that shapes a training step is saved in the checkpoint and restored
just before the first training batch after a resume, so nothing the restart itself does shifts a stream. What is
saved, and why the training loader's position is handed over here, is in ``docs/fault_tolerance.md``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

KEY = "rng_states"


def _numpy_state() -> dict[str, Any]:
    # Tensors and plain Python values only: checkpoints stay loadable with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "kind": str(kind),
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def capture_rng(module: L.LightningModule | None = None) -> dict[str, Any]:
    """This process's global RNG states and ``module.rng_states()``."""
    return {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "module": module.rng_states() if module is not None and hasattr(module, "rng_states") else {},
    }


def restore_rng(state: dict[str, Any], module: L.LightningModule | None = None) -> None:
    """Set the states captured by :func:`capture_rng` (the module's are handed to ``module.load_rng_states``)."""
    random.setstate(state["python"])
    s = state["numpy"]
    np.random.set_state((s["kind"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if module is not None and hasattr(module, "load_rng_states"):
        module.load_rng_states(state.get("module") or {})


def _gather(obj: Any, world_size: int) -> list[Any]:
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


class ExactResumeCallback(Callback):
    """Per-rank RNG states in ``checkpoint["rng_states"]``, restored before the first batch after a resume; the
    training loader's saved position applied to a loader made before the restore."""

    def __init__(self) -> None:
        self._pending: list[dict] | None = None
        self._loader_states: list[dict] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[KEY] = _gather(capture_rng(pl_module), trainer.world_size)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        loop_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        self._loader_states = loop_state.get("combined_loader")
        self._pending = checkpoint.get(KEY)
        if self._pending is None:
            log.warning("the checkpoint has no RNG states (written without ExactResumeCallback): resume is not exact")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the restore, before the first batch is drawn (the loader iterates lazily). Loading the same state
        # twice (Lightning does when it builds the loader after the restore) is harmless.
        combined = trainer.fit_loop._combined_loader
        if self._loader_states and combined is not None:
            combined._load_state_dicts(self._loader_states)
            self._loader_states = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._pending is None:
            return
        states, self._pending = self._pending, None
        if len(states) != trainer.world_size:
            log.warning(
                "the checkpoint holds RNG states of %d ranks, this run has %d: RNG streams start afresh",
                len(states),
                trainer.world_size,
            )
            return
        restore_rng(states[trainer.global_rank], pl_module)
