"""Our ViT video encoder as a zoo family: SurgVISTA, VideoMAE (v1, v2 incl. giant and distilled), MVD, UMT files."""

from __future__ import annotations

import logging

import torch

from surgvista.models.zoo.base import ZooBackbone
from surgvista.utils.seeding import seeded

log = logging.getLogger(__name__)


class StudentBackbone(ZooBackbone):
    """Our ViT encoder (``VideoClassifier`` geometry kwargs) with weights from ``ckpt`` (any ``load_backbone`` layout).

    ``seed`` fixes the initial weights (what a run without ``ckpt`` probes). ``strict=False`` loads the encoder of a
    pre-training checkpoint that also holds decoders (key diff logged); another architecture is an error either way.
    Geometry kwargs cover other ViT sizes, e.g. VideoMAE V2 giant (``embed_dim=1408, depth=40, num_heads=16,
    mlp_ratio=48/11, patch_size=14``). Tokens: the last block's output (no final norm); pooled: their mean.
    """

    def __init__(self, ckpt: str | None = None, strict: bool = True, seed: int = 0, **classifier_kwargs) -> None:
        super().__init__()
        from surgvista.models.classifier import VideoClassifier

        kwargs = {"drop_path_rate": 0.0, "fc_drop_rate": 0.0, **classifier_kwargs}
        with seeded(seed):  # a random-init backbone is a function of its config
            self.net = VideoClassifier(num_classes=1, **kwargs)
        self.embed_dim = self.net.embed_dim
        if ckpt:
            from surgvista.checkpoints.load import load_backbone

            report = load_backbone(ckpt, self.net, strict=strict, load_head=False)
            log.info("zoo student: %s", report)

    def _features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.net.forward_features(video)
        return tokens, tokens.mean(1)
