"""Transformer pieces shared by the student encoder and decoders: attention, blocks, tubelet/frame embeddings, init."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from surgvista.layers.patchify import patchify
from surgvista.layers.rope import apply_rope, check_rope_variant

QKV_BIAS_KINDS = ("divided", "fused", "none")
ATTN_BACKENDS = ("sdpa", "flash_attn", "eager")

try:  # optional extra `flash` (CUDA machines only)
    from flash_attn import flash_attn_func
except ImportError:  # CPU machines, CI
    flash_attn_func = None


def check_attn_backend(backend: str) -> str:
    """Validate an ``attn_backend`` name; ``flash_attn`` also needs the ``flash-attn`` package installed."""
    if backend not in ATTN_BACKENDS:
        raise ValueError(f"unknown attn_backend {backend!r}; expected one of {ATTN_BACKENDS}")
    if backend == "flash_attn" and flash_attn_func is None:
        raise RuntimeError(
            "attn_backend='flash_attn' was requested but the flash-attn package is not installed (it needs a CUDA "
            "build of torch: pip install --no-build-isolation -e '.[flash]' on a GPU machine). Use "
            "attn_backend='sdpa' (the default), which already dispatches to fused FlashAttention kernels on CUDA "
            "in bf16/fp16."
        )
    return backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Softmax attention of ``(B, heads, N, head_dim)`` tensors with scale ``head_dim**-0.5``.

    ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels where available).
    ``"flash_attn"``: the flash-attn package (CUDA, fp16/bf16 only; anything else is an error, never a silent
    fallback). ``"eager"``: the reference's explicit ``softmax((q·scale) @ kᵀ) @ v``, materialising the
    ``N×N`` attention matrix (benchmark baseline and exact-reference debugging).
    """
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "eager":
        attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return attn.softmax(dim=-1) @ v
    if backend == "flash_attn":
        if flash_attn_func is None:
            check_attn_backend(backend)
        if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(
                f"attn_backend='flash_attn' needs CUDA tensors in fp16/bf16, got {q.dtype} on {q.device}: train on a "
                "GPU with trainer.precision=bf16-mixed (or 16-mixed), or use attn_backend='sdpa'"
            )
        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    raise ValueError(f"unknown attn_backend {backend!r}; expected one of {ATTN_BACKENDS}")


def set_attn_backend(module: nn.Module, backend: str) -> nn.Module:
    """Switch every :class:`Attention` inside ``module`` to ``backend`` (in place); return ``module``."""
    check_attn_backend(backend)
    for m in module.modules():
        if isinstance(m, Attention):
            m.attn_backend = backend
    return module


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` weight.

    ``qkv_bias`` picks the bias layout of the checkpoint family: ``"divided"`` (VideoMAE/MVD/UMT/SurgVISTA:
    learnable ``q_bias``/``v_bias``, k bias fixed at 0), ``"fused"`` (timm ImageNet ViTs: ``qkv.bias``) or
    ``"none"``. ``attn_backend`` is one of :data:`ATTN_BACKENDS` (see :func:`attention`); it has no parameters,
    so checkpoints do not depend on it.

    ``rope=True`` rotates queries and keys by the V-JEPA 2 3-D RoPE (:func:`~surgvista.layers.rope.apply_rope`) of
    each token's flat id on the token ``grid`` ``(T', H', W')``; ``forward``'s ``positions`` are those ids
    (``(B, N)``, or ``None`` for ``arange(N)``). Without RoPE, ``positions`` is ignored. RoPE has no parameters.
    ``rope_variant="vjepa21"`` (with ``rope_ref_side``) is V-JEPA 2.1's RoPE (see :mod:`surgvista.layers.rope`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: str = "divided",
        attn_backend: str = "sdpa",
        rope: bool = False,
        grid: tuple[int, int, int] | None = None,
        rope_variant: str = "vjepa2",
        rope_ref_side: int = 16,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        if qkv_bias not in QKV_BIAS_KINDS:
            raise ValueError(f"unknown qkv_bias {qkv_bias!r}; expected one of {QKV_BIAS_KINDS}")
        if rope and grid is None:
            raise ValueError("rope=True needs the token grid (T', H', W')")
        self.rope_grid = tuple(grid) if rope else None
        self.rope_variant, self.rope_ref_side = check_rope_variant(rope_variant), rope_ref_side
        self.num_heads = num_heads
        self.attn_backend = check_attn_backend(attn_backend)
        if qkv_bias == "divided":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias == "fused")
        self.proj = nn.Linear(dim, dim)

    def qkv_bias(self) -> torch.Tensor | None:
        """The effective ``(3·dim,)`` qkv bias, or ``None``."""
        if hasattr(self, "q_bias"):
            return torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        return self.qkv.bias

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias()).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        if self.rope_grid is not None:
            qk = apply_rope(qkv[:2], positions, self.rope_grid, self.rope_variant, self.rope_ref_side)
            qkv = torch.cat([qk, qkv[2:]])
        q, k, v = qkv.unbind(0)
        x = attention(q, k, v, self.attn_backend)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(attn(norm1(x)))`` then ``x + DropPath(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        ln_eps: float = 1e-6,
        qkv_bias: str = "divided",
        attn_backend: str = "sdpa",
        rope: bool = False,
        grid: tuple[int, int, int] | None = None,
        rope_variant: str = "vjepa2",
        rope_ref_side: int = 16,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_backend, rope, grid, rope_variant, rope_ref_side)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``positions``: the tokens' flat ids for RoPE (see :class:`Attention`)."""
        x = x + self.drop_path(self.attn(self.norm1(x), positions))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def run_blocks(
    blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply ``blocks`` in order (``positions``: token ids for RoPE blocks), optionally with per-block activation
    checkpointing."""
    use_checkpoint = grad_checkpointing and torch.is_grad_enabled()
    for blk in blocks:
        x = checkpoint(blk, x, positions, use_reentrant=False) if use_checkpoint else blk(x, positions)
    return x


def rescale_residual_projections(blocks: nn.ModuleList) -> None:
    """Divide block ``i``'s (from 1) ``attn.proj`` and ``mlp.fc2`` weights by ``sqrt(2·i)`` (the V-JEPA init)."""
    with torch.no_grad():
        for i, blk in enumerate(blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))


class TubeletEmbed(nn.Module):
    """Conv3d tubelet embedding: ``(B,3,T,H,W)`` → ``(B, T'·H'·W', D)`` in t-major, row, column order."""

    def __init__(self, img_size: int, patch_size: int, tubelet_size: int, num_frames: int, dim: int) -> None:
        super().__init__()
        if img_size % patch_size or num_frames % tubelet_size:
            raise ValueError(
                f"img_size {img_size} must be a multiple of patch_size {patch_size} and num_frames "
                f"{num_frames} a multiple of tubelet_size {tubelet_size}"
            )
        self.patch_size = (patch_size, patch_size)
        self.tubelet_size = tubelet_size
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        expected = (self.grid[0] * self.tubelet_size, self.grid[1] * self.patch_size[0])
        if video.ndim != 5 or video.shape[2] != expected[0] or video.shape[3:] != (expected[1], expected[1]):
            raise ValueError(
                f"expected video (B, 3, {expected[0]}, {expected[1]}, {expected[1]}), got {tuple(video.shape)}"
            )
        if video.is_cuda:
            return self.patchify_linear(video)
        return self.proj(video).flatten(2).transpose(1, 2)

    def patchify_linear(self, video: torch.Tensor) -> torch.Tensor:
        """The same embedding as one matmul over non-overlapping tubelets (used on CUDA, where cuDNN runs the
        strided bf16 Conv3d as a slow implicit GEMM: ~5 ms a call for 32 clips of 16×224² on an H200)."""
        x = patchify(video, self.tubelet_size, self.patch_size[0], channels_first=True)
        return F.linear(x, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


def init_weights(module: nn.Module, linear_init: Callable[[torch.Tensor], object] = nn.init.xavier_uniform_) -> None:
    """``linear_init`` Linear weights (Xavier-uniform: the reference student's init), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        linear_init(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class FrameEmbed(nn.Module):
    """Conv2d patch embedding applied per frame (image checkpoints): ``(B,3,T,H,W)`` → ``(B, T·H'·W', D)``."""

    def __init__(self, img_size: int, patch_size: int, num_frames: int, dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.patch_size = (patch_size, patch_size)
        self.tubelet_size = 1
        self.grid = (num_frames, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        size = self.grid[1] * self.patch_size[0]
        if video.ndim != 5 or video.shape[2] != self.grid[0] or video.shape[3:] != (size, size):
            raise ValueError(f"expected video (B, 3, {self.grid[0]}, {size}, {size}), got {tuple(video.shape)}")
        b, c, t, h, w = video.shape
        x = self.proj(video.transpose(1, 2).reshape(b * t, c, h, w))  # (B·T, D, H', W')
        return x.flatten(2).transpose(1, 2).reshape(b, -1, x.shape[1])
