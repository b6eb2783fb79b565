"""Parity with ``transformers``' VideoMAE (random weights, no downloads).

HF models are built from a small config with seeded random weights, loaded into ours through ``load_backbone``
(and back through the HF export) and must give the same encoder states, pre-training logits, loss (with and
without ``norm_pix_loss``) and classification logits to 1e-5 in fp32.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")  # dev dependency: always installed by `make test`

from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification  # noqa: E402

from surgvista.checkpoints.export import export  # noqa: E402
from surgvista.checkpoints.load import load_backbone  # noqa: E402
from surgvista.models.classifier import VideoClassifier  # noqa: E402
from surgvista.models.student import SurgVISTAStudent  # noqa: E402
from surgvista.modules.objective import SurgVISTALoss, pixel_targets  # noqa: E402

ATOL = 1e-5
TINY = {
    "image_size": 32,
    "patch_size": 8,
    "num_frames": 4,
    "tubelet_size": 2,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "decoder_hidden_size": 32,
    "decoder_num_hidden_layers": 2,
    "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 128,
}


def hf_config(use_mean_pooling: bool = False, **kw) -> VideoMAEConfig:
    # layer_norm_eps 1e-6 as the original VideoMAE (HF's default is 1e-12).
    return VideoMAEConfig(
        **{**TINY, **kw}, layer_norm_eps=1e-6, use_mean_pooling=use_mean_pooling, attn_implementation="eager"
    )


def randomize(model: nn.Module, seed: int, std: float = 0.1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0.0, std, generator=g)
                if "norm" in name and "weight" in name:
                    p.add_(1.0)
    return model.eval()


def our_student(cfg: VideoMAEConfig) -> SurgVISTAStudent:
    """The VideoMAE configuration of our student (1-D tables, pixel decoder only, HF's decoder-norm eps)."""
    return SurgVISTAStudent(
        "tiny",
        img_size=cfg.image_size,
        num_frames=cfg.num_frames,
        patch_size=cfg.patch_size,
        tubelet_size=cfg.tubelet_size,
        embed_dim=cfg.hidden_size,
        depth=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        mlp_ratio=cfg.intermediate_size / cfg.hidden_size,
        image_decoder=False,
        pixel_decoder_dim=cfg.decoder_hidden_size,
        pixel_decoder_depth=cfg.decoder_num_hidden_layers,
        pixel_decoder_heads=cfg.decoder_num_attention_heads,
        pos_embed="sinusoid1d",
        decoder_norm_eps=1e-5,
        drop_path_rate=0.0,
        ln_eps=1e-6,
    ).eval()


def our_classifier(cfg: VideoMAEConfig) -> VideoClassifier:
    model = VideoClassifier(
        cfg.num_labels,
        "tiny",
        img_size=cfg.image_size,
        num_frames=cfg.num_frames,
        patch_size=cfg.patch_size,
        tubelet_size=cfg.tubelet_size,
        embed_dim=cfg.hidden_size,
        depth=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        pos_embed="sinusoid1d",
        drop_path_rate=0.0,
    ).eval()
    model.fc_norm.eps = 1e-5  # HF hard-codes nn.LayerNorm's default eps on fc_norm
    return model


def clip_and_mask(cfg: VideoMAEConfig, batch: int = 2, ratio: float = 0.75, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, 3, cfg.num_frames, cfg.image_size, cfg.image_size, generator=g)
    n = (cfg.num_frames // cfg.tubelet_size) * (cfg.image_size // cfg.patch_size) ** 2
    mask = torch.zeros(batch, n, dtype=torch.bool)
    for b in range(batch):  # a different mask per clip, same count
        mask[b, torch.randperm(n, generator=g)[: int(ratio * n)]] = True
    return video, mask


def check_pretraining(hf: VideoMAEForPreTraining, ours: SurgVISTAStudent, video, mask, hidden: bool = True) -> None:
    cfg = hf.config
    pixel_values = video.transpose(1, 2)  # HF takes (B, T, C, H, W)
    with torch.no_grad():
        hf_states = hf.videomae(pixel_values, bool_masked_pos=mask, output_hidden_states=hidden)
        latent = ours.forward_encoder(video, mask)
        torch.testing.assert_close(latent, hf_states.last_hidden_state, rtol=0, atol=ATOL)
        if hidden:  # every block's output (before the final norm)
            x = ours.patch_embed(video) + ours.pos_embed
            x = x[~mask].reshape(video.shape[0], -1, x.shape[-1])
            for blk, ref in zip(ours.blocks, hf_states.hidden_states[-len(ours.blocks) :]):
                x = blk(x)
                torch.testing.assert_close(x, ref, rtol=0, atol=ATOL)
        _, pred = ours(video, mask)
        for norm_pix in (True, False):
            cfg.norm_pix_loss = norm_pix
            out = hf(pixel_values, bool_masked_pos=mask)
            torch.testing.assert_close(pred, out.logits, rtol=0, atol=ATOL)
            loss = SurgVISTALoss(distill_weight=0.0, normalize_pixels=norm_pix, pixel_shift=False)(
                video, mask, pred, None, None, cfg.tubelet_size, cfg.patch_size
            )
            torch.testing.assert_close(loss["loss"], out.loss, rtol=0, atol=ATOL)


def test_pretraining_parity_hf_to_ours():
    torch.manual_seed(0)
    cfg = hf_config()
    hf = randomize(VideoMAEForPreTraining(cfg), seed=1)
    ours = our_student(cfg)
    report = load_backbone(hf.state_dict(), ours)
    assert report.layout == "raw/hf" and report.ok and report.unexpected == []
    video, mask = clip_and_mask(cfg)
    check_pretraining(hf, ours, video, mask)


def test_default_pixel_targets_agree_with_hf_formula():
    """Our default (first-pixel shift, SurgVISTA) and the literal VideoMAE formula agree to fp32 rounding."""
    video = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    a = pixel_targets(video, 2, 8, shift=True)
    b = pixel_targets(video, 2, 8, shift=False)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_classification_parity_hf_to_ours():
    torch.manual_seed(0)
    cfg = hf_config(use_mean_pooling=True, num_labels=5)
    hf = randomize(VideoMAEForVideoClassification(cfg), seed=2)
    ours = our_classifier(cfg)
    report = load_backbone(hf.state_dict(), ours)
    assert report.ok and {"fc_norm.weight", "head.weight"} <= set(report.loaded)
    video, _ = clip_and_mask(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ours(video), hf(video.transpose(1, 2)).logits, rtol=0, atol=ATOL)


def test_pretraining_parity_ours_to_hf_through_export(tmp_path):
    cfg = hf_config()
    torch.manual_seed(3)
    ours = randomize(our_student(cfg), seed=3)
    with torch.no_grad():
        ours.down_vid.bias.zero_()  # HF's encoder_to_decoder has no bias
    ckpt = {"state_dict": {f"student.{k}": v for k, v in ours.state_dict().items()}, "epoch": 0}
    torch.save(ckpt, tmp_path / "last.ckpt")
    out = export(tmp_path / "last.ckpt", "hf", tmp_path / "hf", num_heads=4, decoder_heads=2, img_size=32, num_frames=4)
    hf = VideoMAEForPreTraining.from_pretrained(out, attn_implementation="eager").eval()
    video, mask = clip_and_mask(cfg, seed=5)
    check_pretraining(hf, ours, video, mask, hidden=False)


def test_classification_parity_ours_to_hf_through_export(tmp_path):
    cfg = hf_config(use_mean_pooling=True, num_labels=3)
    ours = randomize(our_classifier(cfg), seed=6)
    torch.save({"model": ours.state_dict()}, tmp_path / "finetuned.pth")
    out = export(
        tmp_path / "finetuned.pth",
        "hf",
        tmp_path / "hf",
        num_heads=4,
        img_size=32,
        num_frames=4,
        pos_embed="sinusoid1d",
    )
    hf = VideoMAEForVideoClassification.from_pretrained(out, attn_implementation="eager").eval()
    video, _ = clip_and_mask(cfg, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(hf(video.transpose(1, 2)).logits, ours(video), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_base_preset_pretraining_parity():
    """768-d, 12 blocks, 384-d 4-block decoder (the VideoMAE-B shape) on a 2-clip batch at 4×64×64."""
    cfg = hf_config(
        image_size=64,
        patch_size=16,
        num_frames=4,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        decoder_hidden_size=384,
        decoder_num_hidden_layers=4,
        decoder_num_attention_heads=6,
        decoder_intermediate_size=1536,
    )
    torch.manual_seed(0)
    hf = randomize(VideoMAEForPreTraining(cfg), seed=8, std=0.03)
    ours = our_student(cfg)
    assert ours.embed_dim == 768 and len(ours.blocks) == 12
    assert load_backbone(hf.state_dict(), ours).ok
    video, mask = clip_and_mask(cfg, ratio=0.9, seed=9)
    check_pretraining(hf, ours, video, mask, hidden=False)
