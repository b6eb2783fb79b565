"""Pixel targets and the combined loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from surgvista.modules.objective import SurgVISTALoss, pixel_targets

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1, 1)


def test_pixel_target_layout_matches_manual_gather():
    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 48)  # tokens: 2 x 2 x 3 = 12, patch 16, tubelet 2
    raw = pixel_targets(video, tubelet_size=2, patch_size=16, normalize=False)
    assert raw.shape == (2, 12, 2 * 16 * 16 * 3)
    unnorm = video * STD + MEAN
    for b, t, h, w in [(0, 0, 0, 0), (1, 1, 1, 2), (0, 1, 0, 1), (1, 0, 1, 0)]:
        token = t * 6 + h * 3 + w
        for p0, p1, p2, c in [(0, 0, 0, 0), (1, 3, 7, 2), (0, 15, 15, 1), (1, 0, 9, 0)]:
            index = ((p0 * 16 + p1) * 16 + p2) * 3 + c  # (p0 p1 p2 c), channel fastest
            expected = unnorm[b, c, t * 2 + p0, h * 16 + p1, w * 16 + p2]
            torch.testing.assert_close(raw[b, token, index], expected)


def test_normalised_target_is_per_patch_per_channel_unbiased():
    torch.manual_seed(0)
    video = torch.randn(1, 3, 2, 16, 16)
    target = pixel_targets(video, 2, 16).view(1, 1, 512, 3)
    raw = pixel_targets(video, 2, 16, normalize=False).view(1, 1, 512, 3)
    expected = (raw - raw.mean(2, keepdim=True)) / (raw.var(2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(target.std(2, unbiased=True), torch.ones(1, 1, 3), atol=1e-4, rtol=0)


def test_constant_patch_gives_zero_target():
    video = torch.full((1, 3, 2, 32, 32), 0.3)
    video[..., 16:, 16:] = -1.2  # another constant patch
    target = pixel_targets(video, 2, 16)
    assert torch.isfinite(target).all() and target.abs().max() == 0


def test_loss_combines_masked_terms_with_weights():
    torch.manual_seed(0)
    video = torch.randn(2, 3, 2, 32, 32)
    mask = torch.tensor([[True, False, True, False], [False, True, True, False]])
    pix = torch.randn(2, 2, 1536)
    img = torch.randn(2, 2, 8)
    teacher = torch.randn(2, 4, 8)
    out = SurgVISTALoss(1.0, 0.05, "smooth_l1")(video, mask, pix, img, teacher, 2, 16)
    tgt = pixel_targets(video, 2, 16)[mask].view(2, 2, -1)
    exp_pix = F.mse_loss(pix, tgt)
    exp_img = F.smooth_l1_loss(img, teacher[mask].view(2, 2, 8), beta=1.0)
    torch.testing.assert_close(out["loss_pixel"], exp_pix)
    torch.testing.assert_close(out["loss_distill"], exp_img)
    torch.testing.assert_close(out["loss"], exp_pix + 0.05 * exp_img)
    l2 = SurgVISTALoss(1.0, 0.05, "l2")(video, mask, pix, img, teacher, 2, 16)
    torch.testing.assert_close(l2["loss_distill"], F.mse_loss(img, teacher[mask].view(2, 2, 8)))


def test_videomae_and_distill_only_are_config_swaps():
    video = torch.randn(1, 3, 2, 32, 32)
    mask = torch.tensor([[True, False, True, False]])
    videomae = SurgVISTALoss(1.0, 0.0)(video, mask, torch.zeros(1, 2, 1536), None, None, 2, 16)
    assert videomae["loss_distill"] == 0 and videomae["loss"] == videomae["loss_pixel"]
    distill = SurgVISTALoss(0.0, 1.0, "l1")(video, mask, None, torch.ones(1, 2, 4), torch.zeros(1, 4, 4), 2, 16)
    assert distill["loss"] == 1.0 and distill["loss_pixel"] == 0
    with pytest.raises(ValueError, match="teacher"):
        SurgVISTALoss()(video, mask, None, torch.ones(1, 2, 4), None, 2, 16)
    with pytest.raises(ValueError, match="distill_loss"):
        SurgVISTALoss(distill_loss="cosine")
