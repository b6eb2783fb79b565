"""Lightning strategies for sharded pre-training: :func:`fsdp_strategy` (FSDP1, ``trainer=fsdp``, GPU only) and
:class:`FSDP2Strategy` (``trainer=fsdp2``/``fsdp2_cpu``, also on CPU with gloo); see docs/performance.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from timm.models.vision_transformer import Block as TimmBlock
from torch import nn

from surgvista.checkpoints.io import nonfinite_entries
from surgvista.layers.vit import Block
from surgvista.models.teacher import ImageTeacher
from surgvista.utils.io import replace_folder, temp_dir_next_to


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r} (expected e.g. bfloat16, float16, float32)")
    return dtype


class TeacherReplicatedFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` that hands every unsharded :class:`ImageTeacher` to FSDP as an ignored module."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        teachers = [m for m in model.modules() if isinstance(m, ImageTeacher) and not m.shard]
        if teachers:
            self.kwargs["ignored_modules"] = teachers
        return super()._setup_model(model)


def fsdp_strategy(
    sharding_strategy: str = "FULL_SHARD",
    param_dtype: str | None = "bfloat16",
    reduce_dtype: str | None = "float32",
    buffer_dtype: str | None = None,
    state_dict_type: str = "full",
    cpu_offload: bool = False,
    **kwargs: Any,
) -> FSDPStrategy:
    """Lightning ``FSDPStrategy`` with ``auto_wrap_policy={Block, timm Block}`` and a bf16 mixed-precision policy.

    ``param_dtype=None`` leaves precision to ``trainer.precision`` (Lightning's policy for it).
    """
    from torch.distributed.fsdp import MixedPrecision

    mixed = None
    if param_dtype is not None:
        mixed = MixedPrecision(
            param_dtype=_dtype(param_dtype), reduce_dtype=_dtype(reduce_dtype), buffer_dtype=_dtype(buffer_dtype)
        )
    return TeacherReplicatedFSDPStrategy(
        auto_wrap_policy={Block, TimmBlock},
        mixed_precision=mixed,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        **kwargs,
    )


log = logging.getLogger(__name__)


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 through ``ModelParallelStrategy``: data parallel over every rank (``data_parallel_size="auto"``),
    no tensor parallelism, and by default one full-state-dict checkpoint file written by rank 0 (through the
    checkpoint IO: atomic, finite). Sharded checkpoints (``save_distributed_checkpoint``) are written to a temp
    folder next to the destination and then swapped in, and refused when any rank's shard is not finite."""

    def __init__(
        self,
        data_parallel_size: int | str = "auto",
        tensor_parallel_size: int = 1,
        save_distributed_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_processes * self.num_nodes // int(self._tensor_parallel_size)
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        bad = nonfinite_entries(checkpoint)
        count = torch.tensor([float(len(bad))], device=self.root_device)
        torch.distributed.all_reduce(count)
        if count.item() > 0:
            log.error("refusing to write checkpoint %s: %d shard tensor(s) hold NaN/inf (this rank: %s); the "
                      "previous checkpoint is kept", filepath, int(count.item()), ", ".join(bad[:5]) or "none")
            return None
        path = Path(self.broadcast(str(filepath)))
        tmp = Path(self.broadcast(str(temp_dir_next_to(path)) if self.global_rank == 0 else None))
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("FSDP2Strategy.save_checkpoint")
        if self.global_rank == 0:
            replace_folder(tmp, path)
        self.barrier("FSDP2Strategy.save_checkpoint.replaced")
        return None
