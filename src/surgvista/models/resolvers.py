"""OmegaConf resolvers used by the configs (registered when the ``surgvista`` package is imported)."""

from __future__ import annotations

from omegaconf import OmegaConf


def teacher_dim(preset: str) -> int:
    """Feature width of a teacher preset: the student's image-decoder output follows it (``teacher_dim``)."""
    from surgvista.models.teacher import TEACHER_PRESETS

    if preset not in TEACHER_PRESETS:
        raise ValueError(f"unknown teacher preset {preset!r}; expected one of {sorted(TEACHER_PRESETS)}")
    return TEACHER_PRESETS[preset][0]


def if_cuda(with_cuda, without_cuda):
    """``${surgvista.if_cuda:a,b}``: ``a`` where CUDA is available, else ``b`` (experiments that also run on CPU)."""
    import torch

    return with_cuda if torch.cuda.is_available() else without_cuda


def register() -> None:
    """Register ``${surgvista.teacher_dim:<preset>}`` and ``${surgvista.if_cuda:a,b}`` (idempotent)."""
    OmegaConf.register_new_resolver("surgvista.teacher_dim", teacher_dim, replace=True)
    OmegaConf.register_new_resolver("surgvista.if_cuda", if_cuda, replace=True)


register()
