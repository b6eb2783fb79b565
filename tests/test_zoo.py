"""Backbone zoo (``surgvista.models.zoo``): every family from a tiny random config, documented shapes, parity."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from test_parity_hf import TINY, hf_config, randomize
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from surgvista.checkpoints.load import load_backbone
from surgvista.models.zoo import HFVideoBackbone, StudentBackbone, TimmFrameBackbone, ZooBackbone, ZooClassifier

HF_TINY = {k: v for k, v in TINY.items() if not k.startswith("decoder")}
VJEPA_TINY = {
    "model_type": "vjepa2",
    "crop_size": 32,
    "patch_size": 8,
    "frames_per_clip": 4,
    "tubelet_size": 2,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "pred_hidden_size": 32,
    "pred_num_hidden_layers": 1,
    "pred_num_attention_heads": 2,
    "num_pooler_layers": 1,
}


def clips(batch: int = 2, frames: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def check(backbone: ZooBackbone, video: torch.Tensor, tokens: int) -> None:
    with torch.no_grad():
        t, p = backbone.eval().features(video)
    assert t.shape == (video.shape[0], tokens, backbone.embed_dim)
    assert p.shape == (video.shape[0], backbone.embed_dim)
    assert torch.isfinite(t).all() and torch.isfinite(p).all()
    assert backbone.num_params() > 0


def test_student_family_shapes():
    b = StudentBackbone(preset="tiny", img_size=32, num_frames=4, patch_size=8, embed_dim=64, depth=2, num_heads=4)
    check(b, clips(), tokens=2 * 4 * 4)  # (T/tubelet) x (32/8)^2


def test_hf_videomae_and_vjepa2_from_local_folders(tmp_path):
    for name, cfg in (("videomae", {"model_type": "videomae", **HF_TINY}), ("vjepa2", VJEPA_TINY)):
        random = HFVideoBackbone(config=cfg, seed=1)
        random.model.save_pretrained(tmp_path / name)
        loaded = HFVideoBackbone(path=str(tmp_path / name))
        assert loaded.kind == name
        check(loaded, clips(), tokens=2 * 4 * 4)
        with torch.no_grad():  # the folder round-trips the weights
            torch.testing.assert_close(loaded.eval()(clips()), random.eval()(clips()))
    assert HFVideoBackbone(config=VJEPA_TINY).num_params() < sum(
        p.numel() for p in HFVideoBackbone(config=VJEPA_TINY).model.parameters()
    )  # the predictor is not counted


def test_hf_backbone_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no hub access"):
        HFVideoBackbone(path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="model_type"):
        HFVideoBackbone(config={"model_type": "bert"})


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "tokens"),
    [
        ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}, 32, 4 * (1 + 16)),  # cls + 4x4
        ("vit_small_patch14_dinov2", {"img_size": 28, "depth": 1}, 28, 4 * (1 + 4)),
        ("convnext_atto", {}, 32, 4 * 1),  # stride-32 map of a 32-px frame: one cell per frame
    ],
)
def test_timm_per_frame_family_shapes(name, kwargs, size, tokens):
    b = TimmFrameBackbone(name, model_kwargs=kwargs)
    check(b, clips(size=size), tokens=tokens)
    video = clips(size=size)
    with torch.no_grad():  # pooled = the model's own per-frame pre-logits, averaged over time
        frames = b.normalise(video).transpose(1, 2).flatten(0, 1)
        per_frame = b.model.forward_head(b.model.forward_features(frames), pre_logits=True).view(2, 4, -1)
        torch.testing.assert_close(b(video), per_frame.mean(1))


def test_timm_weights_from_local_file(tmp_path):
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 1}
    source = TimmFrameBackbone("vit_tiny_patch16_224", seed=3, model_kwargs=kwargs)
    torch.save(source.model.state_dict(), tmp_path / "w.pth")
    loaded = TimmFrameBackbone("vit_tiny_patch16_224", pretrained_file=str(tmp_path / "w.pth"), model_kwargs=kwargs)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(clips()), source.eval()(clips()))
    with pytest.raises(FileNotFoundError, match="pretrained_file"):
        TimmFrameBackbone("vit_tiny_patch16_224", pretrained_file=str(tmp_path / "none.pth"))


def test_normalisation_converts_imagenet_clips():
    b = TimmFrameBackbone("vit_tiny_patch16_224", model_kwargs={"img_size": 32, "patch_size": 8, "depth": 1})
    assert b.mean == (0.5, 0.5, 0.5)
    raw = torch.rand(1, 3, 2, 8, 8)
    imagenet = (raw - torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1, 1)) / torch.tensor(IMAGENET_DEFAULT_STD).view(
        3, 1, 1, 1
    )
    torch.testing.assert_close(b.normalise(imagenet), (raw - 0.5) / 0.5)


def test_hf_videomae_through_zoo_equals_our_student_on_converted_weights(tmp_path):
    """The same VideoMAE weights: HF folder → HFVideoBackbone vs load_backbone → StudentBackbone (1e-5)."""
    from transformers import VideoMAEModel

    cfg = hf_config(use_mean_pooling=True)
    hf = randomize(VideoMAEModel(cfg), seed=11)
    hf.save_pretrained(tmp_path / "hf")
    torch.save({"model": hf.state_dict()}, tmp_path / "hf.pth")
    theirs = HFVideoBackbone(path=str(tmp_path / "hf"), attn_implementation="eager").eval()
    ours = StudentBackbone(
        ckpt=str(tmp_path / "hf.pth"),
        preset="tiny",
        img_size=32,
        num_frames=4,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
        pos_embed="sinusoid1d",
    ).eval()
    video = clips(seed=12)
    with torch.no_grad():
        (t1, p1), (t2, p2) = theirs.features(video), ours.features(video)
    torch.testing.assert_close(t1, t2, rtol=0, atol=1e-5)
    torch.testing.assert_close(p1, p2, rtol=0, atol=1e-5)
    assert load_backbone(hf.state_dict(), ours.net, load_head=False).ok


def test_every_backbone_config_composes_and_the_demo_ones_run():
    """conf/model/backbone/*.yaml: each composes into experiment=probe_demo; the demo entries build and run."""
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf"
    names = sorted(p.stem for p in (conf / "model" / "backbone").glob("*.yaml"))
    assert {"demo_student", "demo_videomae", "demo_timm_vit", "demo_convnext"} <= set(names)
    with initialize_config_dir(str(conf), version_base="1.3"):
        for name in names:
            overrides = ["experiment=probe_demo", f"model/backbone={name}"]
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)  # as in a run: the leaderboard label is the model/backbone choice
            try:
                assert cfg.backbone_name == name and cfg.callbacks.probe.backbone == name
            finally:
                HydraConfig.instance().cfg = None
            assert cfg.backbone._target_.startswith("surgvista.models.zoo.")
            assert cfg.data.backbone._target_ == cfg.backbone._target_
            if name.startswith("demo_"):
                b = instantiate(cfg.backbone)
                with torch.no_grad():
                    tokens, pooled = b.eval().features(clips(batch=1, frames=8, size=112))
                assert tokens.shape[0] == 1 and tokens.shape[2] == pooled.shape[1] == b.embed_dim


def test_zoo_classifier_fine_tunes_the_whole_backbone():
    backbone = TimmFrameBackbone("vit_tiny_patch16_224", model_kwargs={"img_size": 32, "patch_size": 8, "depth": 1})
    net = ZooClassifier(backbone, num_classes=5)
    assert {"backbone.model.pos_embed", "backbone.model.cls_token"} <= net.no_weight_decay()
    logits = net(clips())
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert backbone.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_finetune_protocol_composes_over_a_zoo_backbone():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=probe_cholec80", "probe=finetune", "model/backbone=vjepa2_hf"])
    assert cfg.model.net._target_ == "surgvista.models.zoo.ZooClassifier" and cfg.model.net.num_classes == 7
    assert cfg.model.net.backbone == cfg.backbone and cfg.data.inputs == "video" and cfg.train
