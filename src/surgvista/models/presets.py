"""Named model sizes: the student (and fine-tuning classifier) presets and the teacher presets.

Plain data, no torch: the config resolvers read the teacher widths when ``surgvista`` is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, TypeVar


class StudentPreset(NamedTuple):
    """Widths, depth and head counts of a student size; the fine-tuning classifier uses the encoder's."""

    embed_dim: int
    depth: int
    num_heads: int
    pixel_decoder_dim: int
    pixel_decoder_heads: int
    image_decoder_dim: int
    image_decoder_heads: int


class TeacherPreset(NamedTuple):
    """Width, depth and head count of a teacher ViT size."""

    embed_dim: int
    depth: int
    num_heads: int


STUDENT_PRESETS: dict[str, StudentPreset] = {
    "tiny": StudentPreset(192, 4, 3, 96, 3, 96, 3),
    "small": StudentPreset(384, 12, 6, 384, 6, 384, 6),
    "base": StudentPreset(768, 12, 12, 384, 6, 384, 6),
    "large": StudentPreset(1024, 24, 16, 512, 8, 384, 6),
    "huge": StudentPreset(1280, 32, 16, 640, 8, 384, 6),
}

TEACHER_PRESETS: dict[str, TeacherPreset] = {
    "tiny": TeacherPreset(192, 2, 3),
    "small": TeacherPreset(384, 12, 6),
    "base": TeacherPreset(768, 12, 12),
    "large": TeacherPreset(1024, 24, 16),
}

Preset = TypeVar("Preset", StudentPreset, TeacherPreset)


def lookup(presets: Mapping[str, Preset], name: str, what: str) -> Preset:
    """``presets[name]``, or a ``ValueError`` naming ``what`` (e.g. "student preset") and the known names."""
    if name not in presets:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(presets)}")
    return presets[name]
