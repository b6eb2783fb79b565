"""The whole SurgVISTA pre-training objective.

``loss = pixel_weight · MSE(pixel_pred, normalised_pixels[mask]) + distill_weight · D(image_pred, teacher[mask])``

* Pixel targets: the clip is un-normalised to [0, 1], cut into ``tubelet × patch × patch`` tubes laid out
  ``(p0 p1 p2 c)`` with channel fastest, and normalised per patch and per channel over its pixels
  (unbiased std, ``eps`` added to the std). Computed in fp32 whatever the autocast.
* Distillation: SmoothL1 (β = 1, default), L1 or L2 between the image decoder and the frozen teacher's
  patch features, masked tokens only.
* VideoMAE = ``distill_weight=0`` with no image decoder; image-distillation only = ``pixel_weight=0``.
* Dual masking (VideoMAE V2, ``model.decoder_mask_ratio``): the pixel term covers only the masked tokens that the
  pixel decoder reconstructed (:class:`~surgvista.layers.masking.DecoderMask`); distillation covers every masked one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from surgvista.layers.masking import take, token_order
from surgvista.layers.patchify import patchify
from surgvista.utils.host_sync import device_constant

DISTILL_LOSSES = {"smooth_l1": F.smooth_l1_loss, "l1": F.l1_loss, "l2": F.mse_loss}


def pixel_targets(
    video: torch.Tensor,
    tubelet_size: int,
    patch_size: int,
    normalize: bool = True,
    eps: float = 1e-6,
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
    shift: bool = True,
) -> torch.Tensor:
    """Per-token pixel targets ``(B, N, tubelet·patch·patch·3)`` from a normalised clip ``(B,3,T,H,W)``.

    ``shift=True`` (default) subtracts each patch's first pixel before the statistics (same maths, exact 0 on a
    constant patch); ``shift=False`` is the literal VideoMAE/HF formula, bit-for-bit as ``transformers``.
    """
    with torch.autocast(video.device.type, enabled=False):
        shape = (1, 3, 1, 1, 1)
        x = video.float() * device_constant(std, video.device, shape)
        x = x + device_constant(mean, video.device, shape)
        x = patchify(x, tubelet_size, patch_size).unflatten(2, (-1, x.shape[1]))  # (B, N, pixels, C)
        if normalize and shift:
            # Shift by the patch's first pixel first: the statistics are unchanged, a constant patch gives
            # exactly 0 and there is less cancellation in fp32.
            x = x - x[..., :1, :]
        if normalize:
            x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + eps)
        return x.flatten(2)


class SurgVISTALoss(nn.Module):
    """Weighted pixel-reconstruction plus feature-distillation loss on masked tokens."""

    def __init__(
        self,
        pixel_weight: float = 1.0,
        distill_weight: float = 0.05,
        distill_loss: str = "smooth_l1",
        normalize_pixels: bool = True,
        pixel_eps: float = 1e-6,
        pixel_shift: bool = True,
    ) -> None:
        super().__init__()
        if distill_loss not in DISTILL_LOSSES:
            raise ValueError(f"unknown distill_loss {distill_loss!r}; expected one of {sorted(DISTILL_LOSSES)}")
        self.pixel_weight, self.distill_weight = pixel_weight, distill_weight
        self.distill_fn = DISTILL_LOSSES[distill_loss]
        self.normalize_pixels, self.pixel_eps, self.pixel_shift = normalize_pixels, pixel_eps, pixel_shift

    def forward(
        self,
        video: torch.Tensor,
        mask: torch.Tensor,
        pixel_pred: torch.Tensor | None,
        image_pred: torch.Tensor | None,
        teacher_feats: torch.Tensor | None,
        tubelet_size: int,
        patch_size: int,
        num_masked: int | None = None,
        pixel_positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``loss`` (weighted sum) and the unweighted ``loss_pixel`` / ``loss_distill`` terms.

        ``num_masked`` (masked tokens per row) selects the targets without a host read of ``mask``.
        ``pixel_positions (B, K)`` (dual masking): the pixel loss is taken on these masked tokens only, the ones the
        pixel decoder reconstructed (``pixel_pred`` is then ``(B, K, ·)``); ``None``: on every masked token.
        """
        masked = token_order(mask, num_masked)[1]
        zero = video.new_zeros((), dtype=torch.float32)
        out = {"loss": zero, "loss_pixel": zero, "loss_distill": zero}
        if pixel_pred is not None:
            with torch.no_grad():
                target = pixel_targets(
                    video, tubelet_size, patch_size, self.normalize_pixels, self.pixel_eps, shift=self.pixel_shift
                )
                target = take(target, masked if pixel_positions is None else pixel_positions)
            out["loss_pixel"] = F.mse_loss(pixel_pred.float(), target)
            out["loss"] = out["loss"] + self.pixel_weight * out["loss_pixel"]
        if image_pred is not None:
            if teacher_feats is None:
                raise ValueError("the student has an image decoder but no teacher features were given")
            target = take(teacher_feats, masked).float()
            out["loss_distill"] = self.distill_fn(image_pred.float(), target)
            out["loss"] = out["loss"] + self.distill_weight * out["loss_distill"]
        return out
