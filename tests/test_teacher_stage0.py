"""Stage 0 (docs/proxy.md): the image-MAE teacher on proxy frames, written in the teacher layout, used by
the distilling objectives."""

from __future__ import annotations

import pytest
import torch
from helpers import compose

from surgvista.layers.masking import take
from surgvista.models.image_mae import ImageMAE
from surgvista.models.teacher import ImageTeacher, TeacherCheckpointError
from surgvista.modules.objective import pixel_targets
from surgvista.modules.teacher_mae import image_mae_loss

TINY_PROXY = [
    "data.num_videos=3", "data.num_val_videos=1", "data.video_frames=[60,80]", "data.video_size=[96,80]",
    "data.input_size=64", "trainer.max_epochs=1", "print_config=false",
    "callbacks.rich_progress_bar=null", "callbacks.model_summary=null",
]  # fmt: skip


def test_unmasked_encoder_is_timms_forward_and_masking_keeps_the_visible_tokens():
    net = ImageMAE("tiny", img_size=32, patch_size=16, mask_ratio=0.5).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.encode(images), net.encoder.forward_features(images))
        visible = torch.tensor([[0, 3], [1, 2]])
        x = net.encoder.patch_embed(images) + net.encoder.pos_embed
        ref = torch.cat([net.encoder.cls_token.expand(2, -1, -1), take(x, visible)], 1)
        for blk in net.encoder.blocks:
            ref = blk(ref)
        torch.testing.assert_close(net.encode(images, visible), net.encoder.norm(ref))
        pred, masked = net(images, torch.Generator().manual_seed(0))
    assert pred.shape == (2, 2, 16 * 16 * 3) and masked.shape == (2, 2)
    targets = take(pixel_targets(images.unsqueeze(2), 1, 16), masked)
    with torch.no_grad():
        loss = image_mae_loss(net, images, generator=torch.Generator().manual_seed(0))
    assert float(loss) == pytest.approx(
        float(((pred - targets) ** 2).mean()), rel=1e-5
    )


def test_teacher_state_dict_loads_strictly_into_the_image_teacher():
    net = ImageMAE("tiny", img_size=32, patch_size=16, seed=3)
    teacher = ImageTeacher("tiny", img_size=32, patch_size=16, seed=0)
    teacher.load_endossl_state_dict(net.teacher_state_dict())
    for key, value in net.encoder.state_dict().items():
        torch.testing.assert_close(teacher.vit.state_dict()[key], value)
    other = ImageTeacher("tiny", img_size=48, patch_size=16)
    with pytest.raises(TeacherCheckpointError, match="wrong shape: pos_embed"):
        other.load_endossl_state_dict(net.teacher_state_dict())


@pytest.fixture(scope="module")
def stage0(tmp_path_factory):
    """A few steps of ``experiment=teacher_proxy`` on a tiny proxy set: its run folder and the proxy root."""
    from surgvista.run import train

    root = tmp_path_factory.mktemp("stage0")
    cfg = compose("teacher_proxy", f"data.root={root / 'proxy'}", *TINY_PROXY, "data.batch_size=8",
                  "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", out=root / "run")
    train(cfg)
    return root / "run", root / "proxy"


def test_stage0_writes_a_teacher_that_loads_strictly_and_is_trained(stage0):
    run, _ = stage0
    ckpt = run / "teacher.pth"
    assert ckpt.is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert not list(run.glob("*.tmp*"))  # written atomically: no temporary file left behind
    trained = ImageTeacher("tiny", img_size=64, patch_size=16, ckpt=str(ckpt))
    random = ImageTeacher("tiny", img_size=64, patch_size=16, seed=0)  # the MAE's encoder before training
    video = torch.randn(1, 3, 4, 64, 64)
    feats, ref = trained(video), random(video)
    assert feats.shape == ref.shape == (1, 2 * 16, 192)
    assert (feats - ref).abs().max() > 1e-3


def test_distilling_pretraining_runs_with_the_stage0_teacher(stage0, caplog):
    from surgvista.run import train

    run, proxy = stage0
    out = run.parent / "pretrain"
    cfg = compose("demo", "data=proxy", f"data.root={proxy}", *TINY_PROXY, "model=surgvista_tiny",
                  f"model.teacher.ckpt={run / 'teacher.pth'}", "data.batch_size=2", "trainer.limit_train_batches=2",
                  "trainer.limit_val_batches=1", "model.recon_every_n_steps=0", "callbacks.probe_monitor=null", out=out)
    assert cfg.data.variant == "proxy" and cfg.model.teacher.preset == "tiny"
    with caplog.at_level("INFO", logger="surgvista.models.teacher"):
        train(cfg)
    assert f"Loaded teacher weights from {run / 'teacher.pth'}" in caplog.text
    assert "NO TEACHER CHECKPOINT" not in caplog.text
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_image_distillation_loads_the_stage0_teacher_strictly(stage0):
    from hydra.utils import instantiate

    run, proxy = stage0
    ckpt = run / "teacher.pth"
    cfg = compose("demo", "data=proxy", f"data.root={proxy}", *TINY_PROXY, "model=image_distill",
                  "model.student.preset=tiny", "model.teacher.preset=tiny", f"model.teacher.ckpt={ckpt}",
                  out=run.parent / "distill")
    module = instantiate(cfg.model, _convert_="all")
    expected = ImageTeacher("tiny", img_size=64, patch_size=16, ckpt=str(ckpt))
    assert getattr(module.student, "decoder_vid", None) is None and module.teacher.embed_dim == 192
    for key, value in expected.endossl_state_dict().items():
        torch.testing.assert_close(module.teacher.endossl_state_dict()[key], value)
    torch.save({"extra": torch.zeros(1), **torch.load(ckpt)}, run.parent / "extra.pth")
    with pytest.raises(TeacherCheckpointError, match="unexpected key: extra"):
        ImageTeacher("tiny", img_size=64, patch_size=16, ckpt=str(run.parent / "extra.pth"))


def test_stage0_rerun_resumes_from_its_last_checkpoint(stage0, tmp_path):
    """A rerun in the same run folder with one more epoch trains only that epoch and rewrites teacher.pth."""
    import shutil

    from surgvista.run import train

    run, proxy = stage0
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = torch.load(copy / "teacher.pth")
    cfg = compose("teacher_proxy", f"data.root={proxy}", *TINY_PROXY, "data.batch_size=8", "trainer.max_epochs=2",
                  "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", out=copy)
    train(cfg)
    assert sorted(p.name for p in (copy / "checkpoints").glob("epoch_*.ckpt")) == ["epoch_000.ckpt", "epoch_001.ckpt"]
    last = torch.load(copy / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 6  # 3 steps per epoch: the first epoch was not redone
    after = torch.load(copy / "teacher.pth")
    assert after.keys() == before.keys() and any(not torch.equal(after[k], before[k]) for k in before)
