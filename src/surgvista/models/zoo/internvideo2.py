"""InternVideo2's video ViT (Wang et al. 2024; OpenGVLab/InternVideo, ``InternVideo2/single_modality``) as a zoo
family: the Stage-1 1B ``pretrain.pth`` and the distilled S/B/L ``pytorch_model.bin`` files.

The encoder: a Conv3d tubelet embedding, a class token, one learned position table over class + ``T'·H'·W'``
tokens, then pre-norm blocks with RMSNorm (weight only), a fused ``qkv`` without bias whose queries and keys are
RMS-normalised over the full width (``attn.q_norm``/``attn.k_norm``) before the heads are split, layer scale
(``ls1.gamma``/``ls2.gamma``) on both branches and a GELU MLP; no final norm. Parameter names are the released
files', so a file loads exactly once its decoders and the CLIP attention-pooling head are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from surgvista.layers.vit import attention
from surgvista.models.zoo.base import ZooBackbone
from surgvista.models.zoo.frames import read_layout
from surgvista.utils.errors import ConfigError
from surgvista.utils.seeding import seeded

log = logging.getLogger(__name__)

# ``gelu_tanh``: flash-attn's FusedMLP default (``gelu_approx``), what the released models were trained with
# (``use_fused_mlp=True``); ``gelu``: the exact GELU of the non-fused path.
MLP_ACTIVATIONS = {"gelu_tanh": partial(nn.GELU, approximate="tanh"), "gelu": nn.GELU}


class LayerScale(nn.Module):
    """A learned per-channel scale (the key ``gamma``)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class QKNormAttention(nn.Module):
    """Self-attention with a fused ``qkv`` and RMS-normalised queries and keys over the full width."""

    def __init__(self, dim: int, num_heads: int, attn_backend: str = "sdpa") -> None:
        super().__init__()
        self.num_heads, self.attn_backend = num_heads, attn_backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm = nn.RMSNorm(dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        heads = [t.reshape(b, n, self.num_heads, -1).transpose(1, 2) for t in (self.q_norm(q), self.k_norm(k), v)]
        out = attention(*heads, backend=self.attn_backend)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class LayerScaleBlock(nn.Module):
    """``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))`` with RMSNorms."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        ls_init: float,
        drop_path: float,
        act: Callable[[], nn.Module],
        attn_backend: str,
    ) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=1e-6)
        self.attn = QKNormAttention(dim, num_heads, attn_backend)
        self.ls1 = LayerScale(dim, ls_init)
        self.norm2 = nn.RMSNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act)
        self.ls2 = LayerScale(dim, ls_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class TubeletEmbed3d(nn.Module):
    """Conv3d tubelet embedding (the key ``patch_embed.proj``): ``(B,3,T,H,W) -> (B, D, T', H', W')``."""

    def __init__(self, patch_size: int, tubelet_size: int, dim: int) -> None:
        super().__init__()
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.proj(video)


class InternVideo2ViT(nn.Module):
    """The encoder; ``forward(video) -> (B, 1 + T'·H'·W', D)`` (class token first, tokens in t-major order).

    ``pos_embed`` is stored for the pre-training grid (``num_frames``, ``img_size``); another grid resizes its
    patch rows as the release's fine-tuning loader does (time: linear, space: bicubic)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 14,
        num_frames: int = 8,
        tubelet_size: int = 1,
        embed_dim: int = 1408,
        depth: int = 40,
        num_heads: int = 16,
        mlp_ratio: float = 48 / 11,
        layer_scale_init: float = 1e-5,
        drop_path_rate: float = 0.0,
        mlp_act: str = "gelu_tanh",
        attn_backend: str = "sdpa",
    ) -> None:
        super().__init__()
        if mlp_act not in MLP_ACTIVATIONS:
            raise ConfigError(f"mlp_act {mlp_act!r}: expected one of {sorted(MLP_ACTIVATIONS)}")
        self.embed_dim = embed_dim
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.patch_embed = TubeletEmbed3d(patch_size, tubelet_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + int(np.prod(self.grid)), embed_dim))
        act = MLP_ACTIVATIONS[mlp_act]
        rates = np.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            LayerScaleBlock(embed_dim, num_heads, mlp_ratio, layer_scale_init, r, act, attn_backend) for r in rates
        )
        for table in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(table, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def patch_table(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """The patch rows of ``pos_embed`` for the token grid ``grid`` ``(T', H', W')``."""
        table = self.pos_embed[:, 1:]
        if tuple(grid) == self.grid:
            return table
        t0, h0, w0 = self.grid
        d = table.shape[-1]
        x = table.reshape(t0, h0 * w0, d).permute(1, 2, 0)  # (H0·W0, D, T0)
        x = F.interpolate(x, size=grid[0], mode="linear", align_corners=False)
        x = x.permute(2, 1, 0).reshape(grid[0], d, h0, w0)  # (T', D, H0, W0)
        x = F.interpolate(x, size=grid[1:], mode="bicubic", align_corners=False)
        return x.flatten(2).transpose(1, 2).reshape(1, -1, d)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(video)  # (B, D, T', H', W')
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2) + self.patch_table(grid)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1)
        for blk in self.blocks:
            x = blk(x)
        return x


class InternVideo2Backbone(ZooBackbone):
    """InternVideo2's encoder (``conf/model/backbone/internvideo2_*.yaml``).

    ``ckpt``: a released file read through ``layout`` (:class:`~surgvista.checkpoints.layouts.Layout` fields: the
    container, ``model|module|``, and the dropped decoders/pooling head) and loaded exactly; a missing, unexpected
    or wrong-shape key is one error line naming the file and the key. Without ``ckpt``: seeded random weights.
    Tokens: the last block's output (class token first; InternVideo2 has no final norm); pooled: their mean (the
    query of InternVideo2's own attention pooling, which maps to the CLIP width and is not part of the backbone).
    """

    def __init__(
        self,
        ckpt: str | None = None,
        layout: Mapping | None = None,
        seed: int = 0,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        **vit_kwargs,
    ) -> None:
        super().__init__()
        with seeded(seed):
            self.model = InternVideo2ViT(**vit_kwargs)
        self.embed_dim = self.model.embed_dim
        self.mean, self.std = tuple(mean), tuple(std)
        if ckpt:
            from surgvista.checkpoints.layouts import load_exact

            state = read_layout(ckpt, dict(layout or {}))
            load_exact(state, self.model, ckpt, f"the InternVideo2 encoder ({vit_kwargs or 'defaults'})")
            log.info("zoo InternVideo2: loaded %d tensors from %s", len(state), ckpt)

    def _features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model(video)
        return tokens, tokens.mean(1)
