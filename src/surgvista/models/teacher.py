"""Frozen image-level surgical expert (EndoSSL ViT-L/16) built on timm: the distillation targets."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention as TimmAttention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from surgvista.layers.vit import attention, check_attn_backend
from surgvista.models.presets import TEACHER_PRESETS, lookup
from surgvista.utils.errors import UserError
from surgvista.utils.seeding import seeded

log = logging.getLogger(__name__)


class TeacherCheckpointError(UserError, ValueError):
    """A teacher checkpoint whose keys do not match the EndoSSL/SurgVISTA layout."""


def endossl_to_timm(state: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Map the EndoSSL layout (separate ``attn.q/k/v``) to timm's fused ``attn.qkv``."""
    out = dict(state)
    for i in range(depth):
        pre = f"blocks.{i}.attn."
        for kind in ("weight", "bias"):
            parts = [f"{pre}{n}.{kind}" for n in "qkv"]
            if all(p in out for p in parts):
                out[f"{pre}qkv.{kind}"] = torch.cat([out.pop(p) for p in parts])
    return out


def timm_to_endossl(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`endossl_to_timm`: split every fused ``attn.qkv`` into ``attn.q/k/v``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".attn.qkv.weight"):
            pre = key.removesuffix("qkv.weight")
            bias = state[f"{pre}qkv.bias"].chunk(3)
            for name, w, b in zip("qkv", value.chunk(3), bias):
                out[f"{pre}{name}.weight"], out[f"{pre}{name}.bias"] = w, b
        elif not key.endswith(".attn.qkv.bias"):
            out[key] = value
    return out


def unwrap_teacher_checkpoint(obj: object, source: str) -> dict[str, torch.Tensor]:
    """Take ``['model']`` / ``['module']`` if present, drop ``head.*``, strip a ``backbone.`` prefix."""
    if not isinstance(obj, Mapping):
        raise TeacherCheckpointError(f"{source}: expected a state dict, got {type(obj).__name__}")
    for wrapper in ("model", "module"):
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    state = {k.removeprefix("backbone."): v for k, v in obj.items()}
    return {k: v for k, v in state.items() if not k.startswith("head.")}


class _BackendAttention(TimmAttention):
    """timm attention routed through :func:`surgvista.layers.vit.attention` (used for ``flash_attn`` only)."""

    attn_backend = "flash_attn"

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise ValueError("the teacher's flash_attn path supports unmasked, non-causal attention only")
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = attention(self.q_norm(q), self.k_norm(k), v, self.attn_backend)
        x = x.transpose(1, 2).reshape(b, n, getattr(self, "attn_dim", c))
        x = self.norm(x) if hasattr(self, "norm") else x
        return self.proj_drop(self.proj(x))


def set_timm_attn_backend(vit: nn.Module, backend: str) -> None:
    """``sdpa``/``eager`` use timm's own fused/explicit paths; ``flash_attn`` swaps in :class:`_BackendAttention`."""
    check_attn_backend(backend)
    for m in vit.modules():
        if isinstance(m, TimmAttention):
            if backend == "flash_attn":
                m.__class__ = _BackendAttention
            else:
                if isinstance(m, _BackendAttention):
                    m.__class__ = TimmAttention
                m.fused_attn = backend == "sdpa"


def check_teacher_dtype(dtype: str | None, shard: bool) -> str | None:
    """``model.teacher.dtype``: null, bfloat16 or float16, and only for a replicated teacher; returned as given."""
    if dtype not in (None, "bfloat16", "float16"):
        raise ValueError(f"model.teacher.dtype must be null, bfloat16 or float16, got {dtype!r}")
    if dtype is not None and shard:
        raise ValueError("model.teacher.dtype needs a replicated teacher (model.teacher.shard=false)")
    return dtype


def teacher_vit(preset: str, img_size: int, patch_size: int) -> VisionTransformer:
    """The timm ViT of a teacher ``preset`` (EndoSSL layout once :func:`timm_to_endossl` maps its keys): CLS token
    without a position, patch positions learned, no head. The image MAE of stage 0 trains this very module."""
    size = lookup(TEACHER_PRESETS, preset, "teacher preset")
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=size.embed_dim,
        depth=size.depth,
        num_heads=size.num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        class_token=True,
        no_embed_class=True,
        num_classes=0,
        global_pool="token",
        norm_layer=nn.LayerNorm,
        act_layer=nn.GELU,
    )


class ImageTeacher(nn.Module):
    """Frozen ViT image expert giving the distillation targets of a video clip.

    Output: the last block's patch tokens before the final norm (CLS dropped) of every ``frame_stride``-th
    frame, ``(B, T/frame_stride · H'·W', D)`` in the student's t-major token order. The module is hidden from
    parent ``state_dict``s (never saved in Lightning checkpoints) and always stays in eval mode.

    ``attn_backend``: ``sdpa`` (timm's fused path), ``eager`` (timm's explicit softmax, as the reference) or
    ``flash_attn``. ``shard`` and ``dtype`` (pure bf16/fp16 forward on CUDA; ``None``: autocast): docs/performance.md.
    """

    def __init__(
        self,
        preset: str = "large",
        img_size: int = 224,
        patch_size: int = 16,
        ckpt: str | None = None,
        frame_stride: int = 2,
        norm_targets: bool = False,
        seed: int = 0,
        attn_backend: str = "sdpa",
        shard: bool = False,
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        self.compute_dtype = check_teacher_dtype(dtype, shard)
        size = lookup(TEACHER_PRESETS, preset, "teacher preset")
        self.depth, self.embed_dim = size.depth, size.embed_dim
        self.frame_stride, self.norm_targets = frame_stride, norm_targets
        self.shard = shard
        self.tokens_per_frame = (img_size // patch_size) ** 2
        with seeded(seed):
            self.vit = teacher_vit(preset, img_size, patch_size)
        self.set_attn_backend(attn_backend)
        if ckpt:
            self.load_checkpoint(ckpt)
        else:
            log.warning(
                "!!! NO TEACHER CHECKPOINT CONFIGURED: distilling from a RANDOM %s teacher (seed %d). "
                "Set model.teacher.ckpt=/path/to/teacher.pth for real pre-training. !!!",
                preset,
                seed,
            )
        self.requires_grad_(False)
        self.eval()

    def set_attn_backend(self, backend: str) -> None:
        """Switch the attention implementation of every block (no effect on the weights)."""
        set_timm_attn_backend(self.vit, backend)
        self.attn_backend = backend

    def train(self, mode: bool = True) -> ImageTeacher:
        """The teacher is frozen: it ignores requests to enter train mode."""
        return super().train(False)

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):  # noqa: D102
        # Invisible to checkpoints: contributes nothing when a parent collects its state.
        return destination if destination is not None else {}

    def endossl_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights in the EndoSSL/SurgVISTA teacher layout (``keys_teacher_large.txt``)."""
        return timm_to_endossl(self.vit.state_dict())

    def load_endossl_state_dict(self, state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> None:
        """Strictly load EndoSSL-layout weights: any missing or unexpected key is an error listing them."""
        state = unwrap_teacher_checkpoint(state, source)
        expected = {k: v.shape for k, v in self.endossl_state_dict().items()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
        if missing or unexpected or wrong:
            lines = [f"teacher checkpoint {source} does not match the EndoSSL ViT layout:"]
            lines += [f"  missing key: {k}" for k in missing]
            lines += [f"  unexpected key: {k}" for k in unexpected]
            lines += [f"  wrong shape: {k} {tuple(state[k].shape)}, expected {tuple(expected[k])}" for k in wrong]
            raise TeacherCheckpointError("\n".join(lines))
        self.vit.load_state_dict(endossl_to_timm(state, self.depth), strict=True)

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a teacher ``.pth`` (EndoSSL/SurgVISTA layout) with ``weights_only=True``."""
        from surgvista.checkpoints.read import check_finite, torch_load

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"teacher checkpoint not found: {path} (model.teacher.ckpt)")
        obj = torch_load(path)
        self.load_endossl_state_dict(obj, str(path))
        check_finite(self.endossl_state_dict(), f"teacher checkpoint {path}")
        log.info("Loaded teacher weights from %s", path)

    def _last_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_intermediates(
            frames, indices=1, norm=False, output_fmt="NLC", intermediates_only=True
        )[-1]

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        frames = video[:, :, :: self.frame_stride]
        b, c, t, h, w = frames.shape
        frames = frames.transpose(1, 2).reshape(b * t, c, h, w)
        if self.compute_dtype is not None and frames.is_cuda:
            dtype = getattr(torch, self.compute_dtype)
            if self.vit.cls_token.dtype != dtype:
                self.vit.to(dtype)
            with torch.autocast("cuda", enabled=False):
                feats = self._last_tokens(frames.to(dtype)).float()
        else:
            feats = self._last_tokens(frames)
        if self.norm_targets:
            feats = F.layer_norm(feats, (feats.shape[-1],), eps=1e-6)
        return feats.reshape(b, t * feats.shape[1], feats.shape[2])
