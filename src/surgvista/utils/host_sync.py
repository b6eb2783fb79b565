"""Find device→host synchronisations in a training step on any machine, CPU included.

On a GPU every ``.item()``, ``bool(tensor)``, boolean-mask index, ``nonzero`` or blocking host-to-device copy
(``torch.tensor(values, device=cuda)``) makes the host wait for the device and empties the launch queue.
``torch.cuda.set_sync_debug_mode`` reports them on CUDA only; :class:`HostSyncCounter` records the same operations
through ``__torch_function__`` so that a CPU test can assert that a training step has none.
"""

from __future__ import annotations

import functools
import os
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

# Tensor methods and functions whose result needs device values on the host (on CUDA: a synchronisation).
SYNCING = frozenset(
    {
        "item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__format__", "nonzero",
        "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "equal", "allclose",
    }
)
INDEXING = frozenset({"__getitem__", "__setitem__", "index_put", "index_put_"})
_TORCH_DIR = os.path.dirname(torch.__file__)


def device_constant(values: Sequence[float], device: torch.device | str, shape: Sequence[int] = (-1,)) -> torch.Tensor:
    """A float32 tensor of ``values`` on ``device``, made once per device: ``torch.tensor(values, device=cuda)``
    in every step is a blocking host-to-device copy (a sync). Read-only: never modify the result in place."""
    return _device_constant(tuple(float(v) for v in values), torch.device(device), tuple(shape))


@functools.lru_cache(maxsize=64)
def _device_constant(values: tuple[float, ...], device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor even when first asked for in eval
        return torch.tensor(values, dtype=torch.float32, device=device).view(shape)


def _has_bool_index(args: tuple) -> bool:
    """Whether an indexing call uses a boolean tensor (its output shape depends on device values)."""
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


def _is_sync(name: str, args: tuple, kwargs: dict) -> bool:
    if name in SYNCING:
        return True
    if name in INDEXING:
        return _has_bool_index(args)
    if name == "where":
        return len(args) + len(kwargs) == 1  # torch.where(cond) is nonzero
    if name in ("tensor", "as_tensor") and "device" in kwargs:  # host data to the device: a blocking copy
        return not isinstance(args[0] if args else kwargs.get("data"), torch.Tensor)
    tensor_repeats = len(args) > 1 and isinstance(args[1], torch.Tensor)
    return name == "repeat_interleave" and tensor_repeats and "output_size" not in kwargs


def _caller(depth: int = 4) -> str:
    """``file:line`` of the ``depth`` innermost frames outside torch (the code that asked for the value)."""
    frames = [f for f in traceback.extract_stack()[:-2] if not f.filename.startswith(_TORCH_DIR)]
    return " < ".join(f"{os.path.relpath(f.filename)}:{f.lineno}" for f in reversed(frames[-depth:]))


@dataclass
class HostSyncCounter(TorchFunctionMode):
    """``with HostSyncCounter() as c: ...`` records ``(tag, op, caller)`` for every synchronising call.

    ``tag`` is whatever the caller last set (e.g. the optimiser step), so syncs can be attributed to steps.
    Copies to the host (``.cpu()``, ``.to("cpu")``) are not counted: on a CPU run they cannot be told apart from
    moves to the training device; they are what ``torch.cuda.set_sync_debug_mode`` catches on a GPU.
    """

    tag: object = None
    events: list[tuple[object, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if _is_sync(name, args, kwargs):
            self.events.append((self.tag, name, _caller()))
        return func(*args, **kwargs)

    def by_caller(self, tags=None) -> Counter:
        """How many syncs each caller made (all tags, or only those in ``tags``)."""
        return Counter(f"{op} @ {where}" for tag, op, where in self.events if tags is None or tag in tags)
