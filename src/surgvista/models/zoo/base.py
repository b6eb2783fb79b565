"""The zoo's interface: :class:`ZooBackbone` (``features(video) -> (tokens, pooled)``), :class:`FrameBackbone`
(an image model applied to every frame) and :class:`ZooClassifier` (full fine-tuning of any backbone)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn


class ZooBackbone(nn.Module):
    """Base class: subclasses set ``embed_dim`` (and ``mean``/``std`` if not ImageNet's) and implement ``_features``."""

    embed_dim: int
    mean: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)

    def normalise(self, video: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised clips → the backbone's own normalisation (identity when they agree)."""
        if tuple(self.mean) == tuple(IMAGENET_DEFAULT_MEAN) and tuple(self.std) == tuple(IMAGENET_DEFAULT_STD):
            return video

        def col(v: Sequence[float]) -> torch.Tensor:
            return torch.tensor(v, dtype=video.dtype, device=video.device).view(1, 3, 1, 1, 1)

        raw = video * col(IMAGENET_DEFAULT_STD) + col(IMAGENET_DEFAULT_MEAN)
        return (raw - col(self.mean)) / col(self.std)

    def features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (B, N, D), pooled (B, D))`` of ImageNet-normalised clips ``(B, 3, T, H, W)``."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}.features expects clips (B, 3, T, H, W), got {tuple(video.shape)}")
        return self._features(self.normalise(video))

    def _features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """The pooled vector ``(B, D)``."""
        return self.features(video)[1]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class FrameBackbone(ZooBackbone):
    """An image model run on every frame: subclasses set ``self.model`` and implement ``frame_features``.

    ``frame_features(frames (B·T, 3, H, W)) -> (tokens (B·T, n, D) or a map (B·T, D, h, w), pooled (B·T, D))``;
    tokens are concatenated over time (a CNN's map cells become tokens), the pooled vectors averaged over time.
    """

    bgr: bool = False  # the model takes its channels in BGR order (flipped after normalisation)

    def frame_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = video.shape[0], video.shape[2]
        frames = video.transpose(1, 2).flatten(0, 1)
        feats, pooled = self.frame_features(frames.flip(1) if self.bgr else frames)
        if feats.ndim == 4:  # CNN feature map (B·T, C, h, w) → cells as tokens
            feats = feats.flatten(2).transpose(1, 2)
        return feats.reshape(b, -1, feats.shape[-1]), pooled.reshape(b, t, -1).mean(1)


class ZooClassifier(nn.Module):
    """Full fine-tuning of any zoo backbone: pooled vector → LayerNorm → dropout → linear head.

    The ``net`` of a fine-tuning task module (``probe=finetune``); ``no_weight_decay`` collects the backbone
    modules' own exclusions (position tables, class tokens), prefixed.
    """

    def __init__(self, backbone: ZooBackbone, num_classes: int, fc_drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone, self.num_classes = backbone, num_classes
        self.fc_norm = nn.LayerNorm(backbone.embed_dim)
        self.fc_dropout = nn.Dropout(fc_drop_rate)
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        names = set()
        for prefix, module in self.named_modules():
            if module is not self and callable(getattr(module, "no_weight_decay", None)):
                names |= {f"{prefix}.{n}" for n in module.no_weight_decay()}
        return names

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_dropout(self.fc_norm(self.backbone.features(video)[1])))
