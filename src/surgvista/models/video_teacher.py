"""Frozen video teacher (MVD): a pre-trained video ViT encoder whose per-token features are the distillation targets.

Stage 2 of the "video MAE -> distil" recipe (docs/objectives.md): the teacher is the encoder of a stage-1
pre-training run (``model=videomae``, any :func:`~surgvista.checkpoints.load.load_backbone` layout) or of a Hugging
Face VideoMAE folder, and the student's image decoder regresses its features of the masked tokens with the same
distillation loss as for the image teacher.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from surgvista.models.classifier import VideoClassifier
from surgvista.models.presets import STUDENT_PRESETS, lookup
from surgvista.models.teacher import TeacherCheckpointError, check_teacher_dtype
from surgvista.models.zoo import HFVideoBackbone
from surgvista.utils.seeding import seeded

log = logging.getLogger(__name__)


class VideoTeacher(nn.Module):
    """Frozen video encoder giving per-token targets ``(B, N, D)`` on the student's token grid.

    ``ckpt``: a checkpoint file of ours (a ``PretrainModule`` ``.ckpt``, an exported ``.pth``/``.safetensors``, an
    original VideoMAE file) loaded strictly into a ViT of ``preset``'s size, or a Hugging Face VideoMAE folder
    (``transformers.VideoMAEModel``); ``None``: a seeded RANDOM encoder (tests, loud warning). The targets are the
    source encoder's output: after its final norm for our checkpoints (what the pre-training decoder read), HF's
    ``last_hidden_state`` for a folder (its final ``layernorm`` when the config has ``use_mean_pooling=false``);
    ``norm_targets`` adds a LayerNorm without affine on top. The geometry (``img_size``, ``num_frames``,
    ``patch_size``, ``tubelet_size``) must be the student's, so token ``i`` of both is the same tube.

    As :class:`~surgvista.models.teacher.ImageTeacher`: no gradients, always in eval mode, hidden from parent
    ``state_dict``s; ``frame_stride`` (= ``tubelet_size``, accepted for config compatibility), ``tokens_per_frame``,
    ``embed_dim``, ``token_grid``, ``shard`` and ``dtype`` (pure bf16/fp16 forward on CUDA) mean the same.
    ``pos_embed``: the checkpoint's position-table kind (``None``: read off its ``pos_embed``, else sin-cos 3-D).
    """

    def __init__(
        self,
        preset: str = "base",
        img_size: int = 224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        ckpt: str | None = None,
        pos_embed: str | None = None,
        frame_stride: int | None = None,
        norm_targets: bool = False,
        seed: int = 0,
        attn_backend: str = "sdpa",
        shard: bool = False,
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        check_teacher_dtype(dtype, shard)
        if frame_stride not in (None, tubelet_size):
            raise ValueError(
                f"model.teacher.frame_stride={frame_stride}: a video teacher's tokens span tubelet_size="
                f"{tubelet_size} frames; set frame_stride to {tubelet_size} or leave it out"
            )
        self.compute_dtype, self.shard, self.norm_targets = dtype, shard, norm_targets
        self.embed_dim = lookup(STUDENT_PRESETS, preset, "video teacher preset").embed_dim
        self.frame_stride, self.tokens_per_frame = tubelet_size, (img_size // patch_size) ** 2
        self.token_grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.attn_backend = attn_backend
        geometry = {"img_size": img_size, "num_frames": num_frames, "patch_size": patch_size}
        geometry["tubelet_size"] = tubelet_size
        if ckpt and Path(ckpt).is_dir():
            self.encoder = self._hf_encoder(ckpt, geometry, attn_backend)
        else:
            self.encoder = self._our_encoder(preset, geometry, ckpt, pos_embed, seed, attn_backend)
        self.requires_grad_(False)
        self.eval()

    def _hf_encoder(self, folder: str, geometry: dict[str, int], attn_backend: str) -> HFVideoBackbone:
        """``transformers.VideoMAEModel`` of ``folder``; its geometry and width must be the student's."""
        enc = HFVideoBackbone(path=folder, attn_implementation="eager" if attn_backend == "eager" else "sdpa")
        cfg = enc.model.config
        have = {"img_size": cfg.image_size, "num_frames": cfg.num_frames, "patch_size": cfg.patch_size}
        have["tubelet_size"] = getattr(cfg, "tubelet_size", 1)
        wrong = [f"{k}={have[k]} (the student's: {v})" for k, v in geometry.items() if have[k] != v]
        if enc.embed_dim != self.embed_dim:
            wrong.append(f"hidden_size={enc.embed_dim} (model.teacher.preset gives {self.embed_dim})")
        if wrong:
            raise TeacherCheckpointError(f"video teacher {folder}: {', '.join(wrong)}; set model.teacher to match")
        log.info("Loaded the video teacher from the Hugging Face folder %s", folder)
        return enc

    @staticmethod
    def _our_encoder(
        preset: str, geometry: dict[str, int], ckpt: str | None, pos_embed: str | None, seed: int, attn_backend: str
    ) -> VideoClassifier:
        """Our ViT encoder (its final ``norm`` kept, no pooling), loaded strictly from ``ckpt`` or seeded."""
        from surgvista.checkpoints.errors import CheckpointError
        from surgvista.checkpoints.export import canonical_state, pos_kind
        from surgvista.checkpoints.load import load_backbone

        state = None
        if ckpt:
            if not Path(ckpt).is_file():
                raise FileNotFoundError(f"video teacher checkpoint not found: {ckpt} (model.teacher.ckpt)")
            state = canonical_state(ckpt)[0]
            pos_embed = pos_embed or pos_kind(state, geometry)
        kw = {"drop_path_rate": 0.0, "fc_drop_rate": 0.0, "use_mean_pooling": False, "attn_backend": attn_backend}
        with seeded(seed):
            net = VideoClassifier(1, preset, pos_embed=pos_embed or "sincos3d", **geometry, **kw)
        if state is None:
            log.warning(
                "!!! NO VIDEO TEACHER CHECKPOINT CONFIGURED: distilling from a RANDOM %s video teacher (seed %d). "
                "Set model.teacher.ckpt=<stage-1 last.ckpt> for real pre-training. !!!",
                preset,
                seed,
            )
            return net
        try:
            load_backbone(state, net, strict=True, layout="surgvista", load_head=False, pos_embed_kind=pos_embed)
        except CheckpointError as e:
            raise TeacherCheckpointError(f"video teacher checkpoint {ckpt}: {e}") from None
        log.info("Loaded the video teacher's encoder from %s", ckpt)
        return net

    def train(self, mode: bool = True) -> VideoTeacher:
        """The teacher is frozen: it ignores requests to enter train mode."""
        return super().train(False)

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):  # noqa: D102
        # Invisible to checkpoints: contributes nothing when a parent collects its state.
        return destination if destination is not None else {}

    def _tokens(self, video: torch.Tensor) -> torch.Tensor:
        if isinstance(self.encoder, HFVideoBackbone):
            return self.encoder.features(video)[0]
        return self.encoder.norm(self.encoder.forward_features(video))

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Per-token targets ``(B, T'·H'·W', D)`` of normalised clips ``(B, 3, T, H, W)``, t-major like the student."""
        if self.compute_dtype is not None and video.is_cuda:
            dtype = getattr(torch, self.compute_dtype)
            self.encoder.to(dtype)  # a no-op after the first call
            with torch.autocast("cuda", enabled=False):
                feats = self._tokens(video.to(dtype)).float()
        else:
            feats = self._tokens(video)
        if self.norm_targets:
            feats = F.layer_norm(feats, (feats.shape[-1],), eps=1e-6)
        return feats
