"""Hugging Face ``transformers`` models as zoo families: video encoders (VideoMAE, V-JEPA 2) on whole clips and
image encoders (DINOv3 ViT, DINOv2) on every frame, from a local ``save_pretrained`` folder (never the hub)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from surgvista.models.zoo.base import FrameBackbone, ZooBackbone
from surgvista.utils.errors import ConfigError
from surgvista.utils.seeding import seeded

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
        self.model = load_hf_model(path, config, attn_implementation, seed, HF_KINDS)
        self.kind = self.model.config.model_type
        if self.kind not in HF_KINDS:
            raise ConfigError(f"HF model type {self.kind!r} (from {path or 'config'}) is not one of {HF_KINDS}")
        self.embed_dim = int(self.model.config.hidden_size)
        if path is not None:
            self.mean, self.std = hf_normalisation(Path(path), self.mean, self.std)

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


def hf_normalisation(folder: Path, mean, std) -> tuple[tuple, tuple]:
    """``image_mean``/``image_std`` of a folder's (video) preprocessor config, or the given defaults."""
    found = [p for p in (folder / "preprocessor_config.json", folder / "video_preprocessor_config.json") if p.is_file()]
    if not found:
        return mean, std
    cfg = json.loads(found[0].read_text())
    return tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))


def load_hf_model(path: str | None, config: Mapping | None, attn: str, seed: int, kinds: tuple[str, ...]) -> nn.Module:
    """``AutoModel`` from a local folder, or a seeded random one from a config mapping with ``model_type`` in
    ``kinds``."""
    from transformers import AutoConfig, AutoModel

    if (path is None) == (config is None):
        raise ConfigError("an HF backbone needs exactly one of path (a local HF folder) or config (a mapping)")
    if path is not None:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"HF backbone folder not found: {path} (no hub access: give a local folder)")
        model, info = AutoModel.from_pretrained(
            path, local_files_only=True, attn_implementation=attn, output_loading_info=True
        )
        check_loading_info(info, path)
        return model
    cfg = dict(config)
    if cfg.get("model_type") not in kinds:
        raise ConfigError(f"HF backbone config needs model_type in {kinds}, got {cfg.get('model_type')!r}")
    hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    hf_cfg._attn_implementation = attn
    with seeded(seed):
        return AutoModel.from_config(hf_cfg)


def check_loading_info(info: Mapping, folder: str) -> None:
    """Refuse a folder whose weights leave a model parameter missing or of the wrong shape (``transformers`` would
    initialise it randomly): one line naming the folder and the first such key. Unexpected keys (a pre-training
    or classification model's decoder/head) are not loaded, by design."""
    from surgvista.checkpoints.errors import CheckpointError

    for kind, keys in (("missing key", info.get("missing_keys")), ("wrong shape for key", info.get("mismatched_keys"))):
        keys = sorted(map(str, keys or ()))
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise CheckpointError(f"{folder}: {kind} {keys[0]}{more}; the folder's weights do not fit its config.json")


HF_FRAME_KINDS = ("dinov3_vit", "dinov2", "dinov2_with_registers")


class HFFrameBackbone(FrameBackbone):
    """A ``transformers`` image ViT on every frame: DINOv3 (``DINOv3ViTModel``) or DINOv2 (``Dinov2Model``).

    ``path``: a local ``save_pretrained`` folder (e.g. a download of ``facebook/dinov3-vitb16-pretrain-lvd1689m``)
    whose ``preprocessor_config.json`` sets the input normalisation; ``config``: a mapping with ``model_type`` for
    a seeded random model. Tokens: ``last_hidden_state`` (class, register and patch tokens, after the final norm)
    of every frame; pooled: ``pooler_output`` (the normed class token), averaged over time.
    """

    def __init__(
        self, path: str | None = None, config: Mapping | None = None, attn_implementation: str = "sdpa", seed: int = 0
    ) -> None:
        super().__init__()
        self.model = load_hf_model(path, config, attn_implementation, seed, HF_FRAME_KINDS)
        kind = self.model.config.model_type
        if kind not in HF_FRAME_KINDS:
            raise ConfigError(f"HF model type {kind!r} (from {path}) is not one of {HF_FRAME_KINDS}")
        self.embed_dim = int(self.model.config.hidden_size)
        if path is not None:
            self.mean, self.std = hf_normalisation(Path(path), self.mean, self.std)

    def frame_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=frames)
        return out.last_hidden_state, out.pooler_output
