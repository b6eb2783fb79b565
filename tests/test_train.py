"""In-process training behaviour: a fit, the checkpoint contents, resuming from last.ckpt."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import SMALL_DEMO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from surgvista.data.datamodule import DemoDataModule
from surgvista.layers.masking import MaskGenerator
from surgvista.models.student import SurgVISTAStudent
from surgvista.models.teacher import ImageTeacher
from surgvista.modules.objective import SurgVISTALoss
from surgvista.modules.pretrain import PretrainModule


def make_module(**kw) -> PretrainModule:
    student = SurgVISTAStudent(
        "tiny", img_size=64, num_frames=4, teacher_dim=192, image_decoder_depth=1, pixel_decoder_depth=1
    )
    teacher = ImageTeacher("tiny", img_size=64, patch_size=16)
    return PretrainModule(
        student,
        teacher,
        SurgVISTALoss(),
        MaskGenerator("tube", 0.75),
        batch_size=2,
        base_lr=0.05,
        min_lr=0.005,
        warmup_epochs=1,
        **kw,
    )


def make_data(root) -> DemoDataModule:
    return DemoDataModule(
        str(root),
        num_videos=SMALL_DEMO["num_videos"],
        num_val_videos=SMALL_DEMO["num_val_videos"],
        video_frames=SMALL_DEMO["frames_per_video"],
        video_size=SMALL_DEMO["size"],
        batch_size=2,
        num_workers=0,
        num_frames=4,
        sampling_rate=2,
        input_size=64,
    )


class RecordLR(Callback):
    def __init__(self, stop_after_epoch: int | None = None) -> None:
        self.lrs: dict[int, float] = {}
        self.stop_after_epoch = stop_after_epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.stop_after_epoch:
            trainer.should_stop = True


def make_trainer(tmp_path, *callbacks) -> L.Trainer:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1, save_top_k=-1)
    return L.Trainer(
        max_epochs=3,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[ckpt, *callbacks],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def test_resume_from_last_ckpt_continues_steps_and_schedule(tmp_path, demo_root):
    L.seed_everything(0)
    full = RecordLR()
    make_trainer(tmp_path / "full", full).fit(make_module(), datamodule=make_data(demo_root))
    assert sorted(full.lrs) == list(range(9))
    # lr: 0 at step 0, linear warm-up over the first epoch (3 steps) to base_lr·2/256, then cosine
    peak = 0.05 * 2 / 256
    assert full.lrs[0] == 0.0 and full.lrs[2] == pytest.approx(peak) and full.lrs[3] == pytest.approx(peak)
    assert full.lrs[8] < full.lrs[4] < peak

    L.seed_everything(0)
    first = RecordLR(stop_after_epoch=0)
    make_trainer(tmp_path / "part", first).fit(make_module(), datamodule=make_data(demo_root))
    last = tmp_path / "part" / "ckpt" / "last.ckpt"
    assert sorted(first.lrs) == [0, 1, 2] and last.is_file()

    resumed = RecordLR()
    trainer = make_trainer(tmp_path / "part", resumed)
    trainer.fit(make_module(), datamodule=make_data(demo_root), ckpt_path=str(last))
    assert trainer.global_step == 9
    assert sorted(resumed.lrs) == list(range(3, 9))
    for step, lr in resumed.lrs.items():
        assert lr == pytest.approx(full.lrs[step], rel=1e-9), step


def test_checkpoint_holds_student_not_teacher_and_reloads(tmp_path, demo_root):
    L.seed_everything(0)
    module = make_module()
    trainer = make_trainer(tmp_path)
    trainer.fit_loop.max_epochs = 1
    trainer.fit(module, datamodule=make_data(demo_root))
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert keys == {f"student.{k}" for k in module.student.state_dict()}
    assert "train/loss" in trainer.callback_metrics and "val/loss" in trainer.callback_metrics
    assert torch.isfinite(trainer.callback_metrics["train/grad_norm"])
    fresh = make_module()
    fresh.load_state_dict(ckpt["state_dict"])  # strict: the teacher is not asked for
    torch.testing.assert_close(fresh.student.blocks[0].attn.qkv.weight, module.student.blocks[0].attn.qkv.weight)
    bad = dict(ckpt["state_dict"])
    bad.pop("student.blocks.0.attn.q_bias")
    with pytest.raises(RuntimeError, match=r"student.blocks.0.attn.q_bias"):
        fresh.load_state_dict(bad)


def test_teacher_shape_mismatch_is_explained():
    student = SurgVISTAStudent("tiny", img_size=64, num_frames=4, teacher_dim=192)
    teacher = ImageTeacher("small", img_size=64)
    with pytest.raises(ValueError, match="gives 32 tokens of width 384 but the student expects 32 of width 192"):
        PretrainModule(student, teacher, SurgVISTALoss(), MaskGenerator(), batch_size=2)
    with pytest.raises(ValueError, match="needs a teacher"):
        PretrainModule(student, None, SurgVISTALoss(), MaskGenerator(), batch_size=2)
