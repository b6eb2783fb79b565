"""Clip transforms: the TSN multi-scale fixed-corner crop, resize, normalisation."""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from surgvista.utils.host_sync import device_constant

# (x, y) offsets in quarter steps: the 5 classic TSN positions followed by the 8 "more fix crop" ones.
FIXED_OFFSETS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
                 (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3))


def crop_sizes(width: int, height: int, input_size: int = 224, scales=(1, 0.875, 0.75, 0.66),
               max_distort: int = 1) -> list[tuple[int, int]]:
    """Candidate ``(w, h)`` crops: sizes ``int(min(W,H)·s)`` (snapped to ``input_size`` within 3 px),
    paired when their scale indices differ by at most ``max_distort``."""
    base = min(width, height)
    sizes = [int(base * s) for s in scales]
    sizes = [input_size if abs(s - input_size) < 3 else s for s in sizes]
    return [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]


def crop_offsets(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """The 13 fixed ``(x, y)`` crop corners (duplicates possible when a step is 0)."""
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    return [(i * w_step, j * h_step) for i, j in FIXED_OFFSETS]


def resize_clip(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 → antialiased bilinear resize to ``size²`` in uint8 → ``(3, T, size, size)`` uint8.

    Resizing stays in uint8 (as the reference's PIL resize does), which is also the fast path on CPU.
    """
    x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W), a channels-last view: what the uint8 kernel wants
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.transpose(0, 1).contiguous()


def normalize_clip(clip: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """uint8 clip(s) with channels at dim ``-4`` (``(3, T, H, W)`` or ``(B, 3, T, H, W)``) → float, /255,
    ImageNet-normalised. Used on CPU in the loader or on the accelerator after transfer (same result)."""
    shape = (3, 1, 1, 1)
    mean_t, std_t = device_constant(mean, clip.device, shape), device_constant(std, clip.device, shape)
    return (clip.float().div_(255) - mean_t).div_(std_t)


def to_normalized_clip(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 → uint8 resize to ``size²`` → normalised float ``(3, T, size, size)``."""
    return normalize_clip(resize_clip(frames, size))


class MultiScaleCrop:
    """Training transform: one multi-scale fixed-corner crop shared by all frames, then resize (+ normalise).

    ``normalize=False`` returns the uint8 clip, to be normalised after transfer to the accelerator.
    """

    def __init__(self, input_size: int = 224, scales=(1, 0.875, 0.75, 0.66), normalize: bool = True) -> None:
        self.input_size, self.scales, self.normalize = input_size, tuple(scales), normalize

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        height, width = frames.shape[1:3]
        cw, ch = random.choice(crop_sizes(width, height, self.input_size, self.scales))
        x, y = random.choice(crop_offsets(width, height, cw, ch))
        clip = resize_clip(torch.from_numpy(frames[:, y:y + ch, x:x + cw]), self.input_size)
        return normalize_clip(clip) if self.normalize else clip


class CenterCrop:
    """Evaluation transform: the largest centred square, then resize (+ normalise unless ``normalize=False``)."""

    def __init__(self, input_size: int = 224, normalize: bool = True) -> None:
        self.input_size, self.normalize = input_size, normalize

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        height, width = frames.shape[1:3]
        side = min(height, width)
        y, x = (height - side) // 2, (width - side) // 2
        clip = resize_clip(torch.from_numpy(frames[:, y:y + side, x:x + side]), self.input_size)
        return normalize_clip(clip) if self.normalize else clip
