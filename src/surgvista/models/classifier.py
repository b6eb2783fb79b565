"""Fine-tuning backbone: the student encoder with mean pooling and a linear head (video classification)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from surgvista.layers.position import check_pos_embed, position_table
from surgvista.layers.rope import check_rope_variant, rope_ref_side
from surgvista.layers.vit import Block, FrameEmbed, TubeletEmbed, init_weights, run_blocks
from surgvista.models.presets import STUDENT_PRESETS, lookup

PATCH_EMBED_KINDS = ("video", "image")


class VideoClassifier(nn.Module):
    """ViT video classifier whose ``state_dict`` follows the reference ``unifiedmodel.VisionTransformer``.

    Keys: ``patch_embed.proj.*``, ``blocks.{i}.*``, ``fc_norm.*`` (mean pooling) or ``norm.*`` (first-token
    pooling), ``head.*``. The position table is a fixed, non-persistent buffer recomputed for the model's
    geometry (``"sincos3d"`` for SurgVISTA/MVD, ``"sinusoid1d"`` for VideoMAE/UMT/HF), or a learnable
    ``pos_embed`` parameter with ``"learned"``.

    ``patch_embed="video"`` is a Conv3d tubelet (``tubelet_size`` frames); ``"image"`` is a Conv2d per frame
    (image checkpoints, tubelet 1). ``forward(video (B,3,T,H,W))`` returns logits ``(B, num_classes)``.
    ``pos_embed="sinusoid1d", fc_norm_eps=1e-5`` computes what ``transformers.VideoMAEForVideoClassification``
    does (HF hard-codes eps 1e-5 on ``fc_norm``), so such a fine-tuned model exports to it exactly.

    ``pos_embed="rope"`` (with ``qkv_bias="fused"``) is the V-JEPA 2 encoder: no table, 3-D RoPE in every block
    (:mod:`surgvista.layers.rope`); its block keys are those of the official V-JEPA 2 files and of our RoPE student.
    ``rope_variant="vjepa21"``: V-JEPA 2.1's RoPE, to fine-tune its released encoders.
    """

    def __init__(
        self,
        num_classes: int,
        preset: str = "base",
        img_size: int = 224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        patch_embed: str = "video",
        pos_embed: str = "sincos3d",
        qkv_bias: str = "divided",
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        fc_drop_rate: float = 0.5,
        head_init_scale: float = 0.0,
        use_mean_pooling: bool = True,
        ln_eps: float = 1e-6,
        grad_checkpointing: bool = False,
        attn_backend: str = "sdpa",
        fc_norm_eps: float | None = None,
        rope_variant: str = "vjepa2",
    ) -> None:
        super().__init__()
        size = lookup(STUDENT_PRESETS, preset, "preset")
        self.rope_variant = check_rope_variant(rope_variant)
        check_pos_embed(pos_embed, rope=True)
        if patch_embed not in PATCH_EMBED_KINDS:
            raise ValueError(f"unknown patch_embed {patch_embed!r}; expected one of {PATCH_EMBED_KINDS}")
        dim, depth, num_heads = embed_dim or size.embed_dim, depth or size.depth, num_heads or size.num_heads
        self.num_classes, self.embed_dim, self.num_frames, self.img_size = num_classes, dim, num_frames, img_size
        self.pos_embed_kind, self.grad_checkpointing = pos_embed, grad_checkpointing

        if patch_embed == "video":
            self.patch_embed = TubeletEmbed(img_size, patch_size, tubelet_size, num_frames, dim)
        else:
            self.patch_embed = FrameEmbed(img_size, patch_size, num_frames, dim)
        self._add_position_table(pos_embed, dim)
        rates = np.linspace(0, drop_path_rate, depth).tolist()
        rope, variant = pos_embed == "rope", (self.rope_variant, rope_ref_side(patch_size))
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, r, ln_eps, qkv_bias, attn_backend, rope, self.token_grid, *variant)
            for r in rates
        )
        self.use_mean_pooling = use_mean_pooling
        if use_mean_pooling:
            self.fc_norm = nn.LayerNorm(dim, eps=ln_eps if fc_norm_eps is None else fc_norm_eps)
        else:
            self.norm = nn.LayerNorm(dim, eps=ln_eps)
        self.fc_dropout = nn.Dropout(fc_drop_rate)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters(head_init_scale)

    def _add_position_table(self, kind: str, dim: int) -> None:
        """A learned ``pos_embed`` parameter, a fixed non-persistent buffer, or ``None`` (RoPE: no table)."""
        if kind == "rope":
            self.pos_embed = None
            return
        table = position_table(kind, dim, self.token_grid)
        if kind == "learned":
            self.pos_embed = nn.Parameter(table)
        else:
            self.register_buffer("pos_embed", table, persistent=False)

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """``(T', H', W')`` token grid."""
        return self.patch_embed.grid

    def reset_parameters(self, head_init_scale: float = 0.0) -> None:
        """Reference init: trunc-normal(0.02) Linears, zero biases, unit LN; head scaled by ``head_init_scale``."""
        self.apply(functools.partial(init_weights, linear_init=functools.partial(nn.init.trunc_normal_, std=0.02)))
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)
            self.head.bias.mul_(head_init_scale)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Per-block activation checkpointing."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names excluded from weight decay (the reference's set)."""
        return {"pos_embed", "cls_token"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm layer grouping for layer-wise lr decay: stem → 0, ``blocks.i`` → i+1, the rest (norm, head) last."""
        return {"stem": r"^pos_embed|^patch_embed", "blocks": [(r"^blocks\.(\d+)", None)]}

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """Token features ``(B, N, D)`` after the blocks (before pooling)."""
        x = self.patch_embed(video)
        if self.pos_embed is not None:
            x = x + self.pos_embed.type_as(x)
        return run_blocks(self.blocks, x, self.grad_checkpointing)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool tokens (mean → ``fc_norm``, or first token → ``norm``), dropout, head."""
        x = self.fc_norm(x.mean(1)) if self.use_mean_pooling else self.norm(x)[:, 0]
        return x if pre_logits else self.head(self.fc_dropout(x))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video))
