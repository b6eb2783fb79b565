"""OmegaConf resolvers used by the configs (registered by ``import surgvista``)."""

from __future__ import annotations

from omegaconf import OmegaConf

from surgvista.models.presets import TEACHER_PRESETS, lookup


def teacher_dim(preset: str) -> int:
    """Feature width of a teacher preset: the student's image-decoder output follows it (``teacher_dim``)."""
    return lookup(TEACHER_PRESETS, preset, "teacher preset").embed_dim


def if_cuda(with_cuda, without_cuda):
    """``${surgvista.if_cuda:a,b}``: ``a`` where CUDA is available, else ``b`` (experiments that also run on CPU)."""
    import torch

    return with_cuda if torch.cuda.is_available() else without_cuda


def under(folder, name: str):
    """``${surgvista.under:<folder>,<name>}``: ``<folder>/<name>``, or ``None`` when ``folder`` is null (with
    ``${oc.select:data.root,null}``: a callback's file of the data group's folder, off after ``data=<a group
    without one>`` instead of an unresolvable interpolation)."""
    return None if folder is None else f"{folder}/{name}"


def register() -> None:
    """Register ``${surgvista.teacher_dim:<preset>}``, ``${surgvista.if_cuda:a,b}`` and
    ``${surgvista.under:folder,name}`` (idempotent)."""
    OmegaConf.register_new_resolver("surgvista.teacher_dim", teacher_dim, replace=True)
    OmegaConf.register_new_resolver("surgvista.under", under, replace=True)
    OmegaConf.register_new_resolver("surgvista.if_cuda", if_cuda, replace=True)
