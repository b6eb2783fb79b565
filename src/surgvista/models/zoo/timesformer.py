"""A divided space-time video ViT (TimeSformer, Bertasius et al. 2021) as a zoo family: Endo-FM (Wang et al., MICCAI
2023), whose released ``endo_fm.pth`` is a DINO/SVT checkpoint with this network under ``teacher``/``backbone.``.

Each block attends over time first (every patch position across the frames), then over space (every frame's
patches with the class token), then applies the MLP. The network's parameter names are those of the released file
(``cls_token``, ``pos_embed``, ``time_embed``, ``patch_embed.proj``, ``blocks.<i>.{temporal_norm1, temporal_attn,
temporal_fc, norm1, attn, norm2, mlp}``, ``norm``), so a file is loaded exactly after its prefix is removed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from surgvista.layers.vit import Attention
from surgvista.models.zoo.base import ZooBackbone
from surgvista.models.zoo.frames import read_layout
from surgvista.utils.seeding import seeded

log = logging.getLogger(__name__)


class DividedSpaceTimeBlock(nn.Module):
    """Temporal attention, then spatial attention, then the MLP (pre-norm, residual each).

    Tokens: the class token, then the patches in (position, frame) order (frame fastest). The temporal branch
    attends over the ``t`` frames of each position and passes through ``temporal_fc``; the spatial branch attends
    over each frame's patches with a copy of the class token, whose ``t`` outputs are averaged.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, ln_eps: float, attn_backend: str
    ) -> None:
        super().__init__()
        self.temporal_norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.temporal_attn = Attention(dim, num_heads, "fused", attn_backend)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, num_heads, "fused", attn_backend)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        b, d = x.shape[0], x.shape[2]
        cls, patches = x[:, :1], x[:, 1:]
        n = patches.shape[1] // frames
        over_time = self.temporal_attn(self.temporal_norm1(patches.reshape(b * n, frames, d)))
        patches = patches + self.temporal_fc(self.drop_path(over_time).reshape(b, n * frames, d))
        per_frame = patches.reshape(b, n, frames, d).transpose(1, 2).reshape(b * frames, n, d)
        cls_copies = cls.expand(b, frames, d).reshape(b * frames, 1, d)
        out = self.drop_path(self.attn(self.norm1(torch.cat([cls_copies, per_frame], 1))))
        cls = cls + out[:, :1].reshape(b, frames, d).mean(1, keepdim=True)
        patches = patches + out[:, 1:].reshape(b, frames, n, d).transpose(1, 2).reshape(b, n * frames, d)
        x = torch.cat([cls, patches], 1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed2d(nn.Module):
    """Per-frame Conv2d patch embedding (the key ``patch_embed.proj``)."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.proj(frames)


class DividedSpaceTimeViT(nn.Module):
    """Class token + per-frame patches; learned spatial table ``pos_embed`` ``(1, 1+N, D)`` and time table
    ``time_embed`` ``(1, T, D)``, both resized by nearest neighbour for another grid or frame count (as the
    released code does); divided blocks; final LayerNorm. ``forward(video (B,3,T,H,W)) -> (B, 1+N·T, D)``."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 8,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        ln_eps: float = 1e-6,
        attn_backend: str = "sdpa",
    ) -> None:
        super().__init__()
        self.embed_dim, self.patch_size = embed_dim, patch_size
        side = img_size // patch_size
        self.patch_embed = PatchEmbed2d(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side + 1, embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        rates = np.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(embed_dim, num_heads, mlp_ratio, r, ln_eps, attn_backend) for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=ln_eps)
        for table in (self.cls_token, self.pos_embed, self.time_embed):
            nn.init.trunc_normal_(table, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "time_embed"}

    def spatial_table(self, h: int, w: int) -> torch.Tensor:
        """The patch rows of ``pos_embed`` for an ``h×w`` grid (nearest-neighbour resize of the square table)."""
        table = self.pos_embed[:, 1:]
        side = int(round(table.shape[1] ** 0.5))
        if (h, w) == (side, side):
            return table
        grid = table.transpose(1, 2).reshape(1, -1, side, side)
        return F.interpolate(grid, size=(h, w), mode="nearest").flatten(2).transpose(1, 2)

    def time_table(self, t: int) -> torch.Tensor:
        """``time_embed`` for ``t`` frames (nearest-neighbour resize)."""
        if t == self.time_embed.shape[1]:
            return self.time_embed
        return F.interpolate(self.time_embed.transpose(1, 2), size=t, mode="nearest").transpose(1, 2)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, _, t = video.shape[:3]
        x = self.patch_embed(video.transpose(1, 2).flatten(0, 1))  # (B·T, D, h, w)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self.spatial_table(h, w)  # (B·T, N, D)
        x = x.reshape(b, t, h * w, -1).transpose(1, 2) + self.time_table(t).unsqueeze(1)  # (B, N, T, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x.flatten(1, 2)], 1)
        for blk in self.blocks:
            x = blk(x, t)
        return self.norm(x)


class TimeSformerBackbone(ZooBackbone):
    """A divided space-time ViT (Endo-FM's network; ``conf/model/backbone/endofm.yaml``).

    ``ckpt``: a released file read through ``layout`` (the :class:`~surgvista.checkpoints.layouts.Layout` fields;
    Endo-FM: ``state_key: teacher``, ``keep_prefix: backbone.``) and loaded exactly: a missing, unexpected or
    wrong-shape key is one error line naming the file and the key. Without ``ckpt``: seeded random weights.
    Tokens: the class token and every (position, frame) patch token after the final norm; pooled: the normed class
    token (what Endo-FM's ``forward_features`` returns to its linear and fine-tuning heads).
    """

    def __init__(
        self,
        ckpt: str | None = None,
        layout: Mapping | None = None,
        seed: int = 0,
        mean: Sequence[float] = (0.45, 0.45, 0.45),
        std: Sequence[float] = (0.225, 0.225, 0.225),
        **vit_kwargs,
    ) -> None:
        super().__init__()
        with seeded(seed):
            self.model = DividedSpaceTimeViT(**vit_kwargs)
        self.embed_dim = self.model.embed_dim
        self.mean, self.std = tuple(mean), tuple(std)
        if ckpt:
            from surgvista.checkpoints.layouts import load_exact

            state = read_layout(ckpt, dict(layout or {}))
            load_exact(state, self.model, ckpt, f"a divided space-time ViT ({vit_kwargs or 'defaults'})")
            log.info("zoo TimeSformer: loaded %d tensors from %s", len(state), ckpt)

    def _features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model(video)
        return tokens, tokens[:, 0]
