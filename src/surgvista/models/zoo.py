"""Backbone zoo: any video or image model behind one small interface, for frozen probes and fine-tuning.

Every backbone is a :class:`ZooBackbone`: ``features(video)`` takes clips ``(B, 3, T, H, W)`` normalised with the
ImageNet mean/std (what every surgvista data pipeline produces), converts them to the backbone's own input
normalisation (``mean``/``std``) and returns ``(tokens (B, N, D), pooled (B, D))`` with ``D = embed_dim``.

Families (:class:`StudentBackbone`, :class:`HFVideoBackbone`, :class:`TimmFrameBackbone`; tokens and pooling of
each in docs/benchmark.md): ``conf/model/backbone/*.yaml`` picks one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from surgvista.utils.errors import ConfigError
from surgvista.utils.seeding import seeded

log = logging.getLogger(__name__)


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


class StudentBackbone(ZooBackbone):
    """Our ViT encoder (``VideoClassifier`` geometry kwargs) with weights from ``ckpt`` (any ``load_backbone`` layout).

    ``seed`` fixes the initial weights (what a run without ``ckpt`` probes). ``strict=False`` loads the encoder of a
    pre-training checkpoint that also holds decoders (key diff logged); another architecture is an error either way.
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


HF_KINDS = ("videomae", "vjepa2")


class HFVideoBackbone(ZooBackbone):
    """A ``transformers`` video encoder: VideoMAE (``VideoMAEModel``) or V-JEPA 2 (``VJEPA2Model``, predictor skipped).

    ``path``: a local ``save_pretrained`` folder (of a pre-training/classification model: its encoder is loaded),
    whose ``(video_)preprocessor_config.json`` sets the input normalisation; ``config``: a mapping with
    ``model_type`` for a seeded random model instead.
    """

    def __init__(
        self,
        path: str | None = None,
        config: Mapping | None = None,
        attn_implementation: str = "sdpa",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if (path is None) == (config is None):
            raise ConfigError("HFVideoBackbone needs exactly one of path (a local HF folder) or config (a mapping)")
        self.model = self._load(path, config, attn_implementation, seed)
        self.kind = self.model.config.model_type
        if self.kind not in HF_KINDS:
            raise ConfigError(f"HF model type {self.kind!r} (from {path or 'config'}) is not one of {HF_KINDS}")
        self.embed_dim = int(self.model.config.hidden_size)
        if path is not None:
            self.mean, self.std = _hf_normalisation(Path(path), self.mean, self.std)

    @staticmethod
    def _load(path: str | None, config: Mapping | None, attn: str, seed: int) -> nn.Module:
        from transformers import AutoConfig, AutoModel

        if path is not None:
            if not Path(path).is_dir():
                raise FileNotFoundError(f"HF backbone folder not found: {path} (no hub access: give a local folder)")
            return AutoModel.from_pretrained(path, local_files_only=True, attn_implementation=attn)
        cfg = dict(config)
        if cfg.get("model_type") not in HF_KINDS:
            raise ConfigError(f"HF backbone config needs model_type in {HF_KINDS}, got {cfg.get('model_type')!r}")
        hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        hf_cfg._attn_implementation = attn
        with seeded(seed):
            return AutoModel.from_config(hf_cfg)

    def _features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = video.transpose(1, 2)  # HF video models take (B, T, C, H, W)
        if self.kind == "vjepa2":
            tokens = self.model(pixel_values_videos=frames, skip_predictor=True).last_hidden_state
        else:
            tokens = self.model(pixel_values=frames).last_hidden_state
        return tokens, tokens.mean(1)

    def num_params(self) -> int:
        """Encoder parameters (V-JEPA 2's predictor is not part of the backbone)."""
        return sum(p.numel() for n, p in self.model.named_parameters() if not n.startswith("predictor."))


def _hf_normalisation(folder: Path, mean, std) -> tuple[tuple, tuple]:
    """``image_mean``/``image_std`` of a folder's (video) preprocessor config, or the given defaults."""
    found = [p for p in (folder / "preprocessor_config.json", folder / "video_preprocessor_config.json") if p.is_file()]
    if not found:
        return mean, std
    cfg = json.loads(found[0].read_text())
    return tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))


class TimmFrameBackbone(ZooBackbone):
    """A timm image model run on every frame; ``pretrained_file`` loads local weights (``pretrained_cfg_overlay``).

    ``model_kwargs`` go to ``timm.create_model`` (e.g. ``img_size`` for ViTs). The input normalisation is the
    model's ``pretrained_cfg`` mean/std.
    """

    def __init__(
        self, name: str, pretrained_file: str | None = None, seed: int = 0, model_kwargs: Mapping | None = None
    ) -> None:
        super().__init__()
        import timm

        kwargs = dict(model_kwargs or {})
        if pretrained_file:
            if not Path(pretrained_file).is_file():
                raise FileNotFoundError(f"timm backbone {name}: pretrained_file not found: {pretrained_file}")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained_file)})
        with seeded(seed):
            self.model = timm.create_model(name, num_classes=0, **kwargs)
        self.embed_dim = int(self.model.num_features)
        cfg = self.model.pretrained_cfg or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_DEFAULT_STD))

    def _features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = video.shape[0], video.shape[2]
        feats = self.model.forward_features(video.transpose(1, 2).flatten(0, 1))
        pooled = self.model.forward_head(feats, pre_logits=True).view(b, t, -1).mean(1)
        if feats.ndim == 4:  # CNN feature map (B·T, C, h, w) → cells as tokens
            feats = feats.flatten(2).transpose(1, 2)
        return feats.reshape(b, -1, feats.shape[-1]), pooled


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
