"""Checkpoint files that are never half-written (:func:`surgvista.utils.io.atomic_torch_save`) and never hold
non-finite weights (refused and logged, so the last good file stays in place)."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from surgvista.checkpoints.read import nonfinite_tensors
from surgvista.utils.io import atomic_torch_save

log = logging.getLogger(__name__)


def nonfinite_entries(checkpoint: dict) -> list[str]:
    """Names of the tensors in the weights and optimiser states (this rank's shards) that hold NaN or inf."""
    return nonfinite_tensors({k: checkpoint.get(k, {}) for k in ("state_dict", "optimizer_states")})


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic same-folder writes and a refusal to write non-finite checkpoints."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options (got {storage_options!r})")
        bad = nonfinite_entries(checkpoint)
        if bad:
            log.error(
                "refusing to write checkpoint %s: %d tensor(s) hold NaN/inf (%s%s); the previous file is kept",
                path,
                len(bad),
                ", ".join(bad[:5]),
                ", ..." if len(bad) > 5 else "",
            )
            return
        atomic_torch_save(checkpoint, path)
