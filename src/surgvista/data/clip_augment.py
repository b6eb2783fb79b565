"""Fine-tuning clip transforms: timm's augmentations made clip-consistent.

Training: RandAugment ``rand-m7-n4-mstd0.5-inc1`` (same ops, magnitudes and signs on every frame) →
normalise → one random-resized-crop box for the clip → horizontal flip of the whole clip → RandomErasing with
one box on every frame (fresh per-pixel noise per frame). Evaluation: the whole frame squashed to the input
size (the reference's single view), optionally with extra views for test-time averaging.
Mixup/CutMix lives in :func:`mix_clips` (applied to batches by the task module).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.mixup import Mixup
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation

EVAL_VIEWS = ("squash", "center", "hflip")


def normalize_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 → ImageNet-normalised float ``(T, 3, H, W)``."""
    x = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    return (x - mean) / std


def resize_frames(x: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """Bilinear (align_corners False) resize of ``(T, 3, H, W)`` to ``size × size``, aspect not kept."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)


class ClipRandAugment:
    """timm RandAugment replayed on every frame: one draw of ops/magnitudes/signs per clip.

    timm draws its choices from the global ``random`` and ``numpy.random`` generators; the states are saved
    before the first frame and restored before every other frame, so each frame sees the same draws.
    """

    def __init__(self, config: str = "rand-m7-n4-mstd0.5-inc1", translate_const: int = 100) -> None:
        hparams = {"translate_const": translate_const, "img_mean": (128, 128, 128), "interpolation": Image.BICUBIC}
        self.transform = rand_augment_transform(config, hparams)

    def __call__(self, frames: Sequence[Image.Image]) -> list[Image.Image]:
        py_state, np_state = random.getstate(), np.random.get_state()
        out = []
        for frame in frames:
            random.setstate(py_state)
            np.random.set_state(np_state)
            out.append(self.transform(frame))
        return out


class TrainClipTransform:
    """Reference training augmentation; ``(T, H, W, 3)`` uint8 → ``(3, T, S, S)`` float."""

    def __init__(
        self,
        input_size: int = 224,
        auto_augment: str | None = "rand-m7-n4-mstd0.5-inc1",
        scale: Sequence[float] = (0.7, 1.0),
        ratio: Sequence[float] = (0.75, 4 / 3),
        hflip: float = 0.5,
        reprob: float = 0.25,
    ) -> None:
        self.input_size, self.scale, self.ratio, self.hflip = input_size, tuple(scale), tuple(ratio), hflip
        self.randaug = ClipRandAugment(auto_augment, translate_const=int(input_size * 0.45)) if auto_augment else None
        self.erase = RandomErasing(reprob, mode="pixel", max_count=1, device="cpu") if reprob > 0 else None

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        if self.randaug is not None:
            frames = np.stack([np.asarray(f) for f in self.randaug([Image.fromarray(f) for f in frames])])
        x = normalize_frames(frames)  # (T, 3, H, W)
        top, left, h, w = RandomResizedCropAndInterpolation.get_params(x, self.scale, self.ratio)
        x = resize_frames(x[..., top : top + h, left : left + w], self.input_size)
        if random.random() < self.hflip:
            x = x.flip(-1)
        if self.erase is not None:
            t = x.shape[0]
            # One "image" of T·3 channels: one box for every frame, fresh noise per frame and channel.
            x = self.erase(x.reshape(t * 3, *x.shape[-2:])).reshape(t, 3, *x.shape[-2:])
        return x.transpose(0, 1).contiguous()


class EvalClipTransform:
    """Deterministic evaluation views; one view → ``(3, T, S, S)``, several → ``(V, 3, T, S, S)``.

    ``squash``: the whole frame resized to ``S × S`` (the reference); ``center``: the largest centred square;
    ``hflip``: the squashed view mirrored.
    """

    def __init__(self, input_size: int = 224, views: Sequence[str] = ("squash",)) -> None:
        bad = [v for v in views if v not in EVAL_VIEWS]
        if not views or bad:
            raise ValueError(f"unknown eval view(s) {bad or views!r}; expected a non-empty list from {EVAL_VIEWS}")
        self.input_size, self.views = input_size, tuple(views)

    def _view(self, x: torch.Tensor, view: str) -> torch.Tensor:
        if view == "center":
            h, w = x.shape[-2:]
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            return resize_frames(x[..., top : top + side, left : left + side], self.input_size)
        x = resize_frames(x, self.input_size)
        return x.flip(-1) if view == "hflip" else x

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        x = normalize_frames(frames)
        views = [self._view(x, v).transpose(0, 1).contiguous() for v in self.views]
        return views[0] if len(views) == 1 else torch.stack(views)


def make_mixup(num_classes: int, mixup: float = 0.8, cutmix: float = 1.0, label_smoothing: float = 0.1) -> Mixup | None:
    """timm ``Mixup`` in batch mode (the reference), or ``None`` when both alphas are 0."""
    if mixup <= 0 and cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        prob=1.0,
        switch_prob=0.5,
        mode="batch",
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )


def mix_clips(mixup: Mixup, video: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply timm ``Mixup`` to clips ``(B, C, T, H, W)``: one CutMix box shared by every frame.

    timm cuts the last two dims of a 4-D batch, so the clip is viewed as ``(B, C·T, H, W)`` and back.
    """
    b, c, t, h, w = video.shape
    if b % 2:
        raise ValueError(f"Mixup/CutMix needs an even batch size, got {b} (use drop_last=True and an even batch)")
    x, soft = mixup(video.reshape(b, c * t, h, w).clone(), target)
    return x.reshape(b, c, t, h, w), soft
