"""Device and autocast from the feature extractors' string settings (``device: auto|cpu|cuda:N``,
``autocast: null|bfloat16|float16``)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def torch_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, dtype: str | None) -> AbstractContextManager:
    """``torch.autocast`` on ``device`` in the dtype named ``dtype``; no autocast when ``dtype`` is empty."""
    return torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype else nullcontext()
