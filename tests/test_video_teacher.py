"""Video teacher (MVD): built from our pre-training checkpoints and from Hugging Face VideoMAE folders, frozen and
unsaved, on the student's token grid; the two-stage "video MAE -> distil" recipe on the demo data."""

from __future__ import annotations

import csv
import logging

import pytest
import torch
from helpers import compose, small_demo_overrides

from surgvista.layers.masking import MaskGenerator
from surgvista.models.student import SurgVISTAStudent
from surgvista.models.teacher import TeacherCheckpointError
from surgvista.models.video_teacher import VideoTeacher
from surgvista.modules.objective import SurgVISTALoss
from surgvista.modules.pretrain import PretrainModule

GEOMETRY = {"img_size": 32, "num_frames": 4, "patch_size": 16, "tubelet_size": 2}


def save_lightning(student: SurgVISTAStudent, path) -> None:
    """A ``PretrainModule`` checkpoint as Lightning lays it out (the student's weights under ``student.``)."""
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 0, "global_step": 3, "pytorch-lightning_version": "2.5.0"}, path)


def videomae_student(seed: int, **kw) -> SurgVISTAStudent:
    """A tiny ``model=videomae`` student (no image decoder) with its own random weights."""
    torch.manual_seed(seed)
    return SurgVISTAStudent("tiny", **GEOMETRY, image_decoder=False, pixel_decoder_depth=1, **kw).eval()


@pytest.mark.parametrize("pos_embed", ["sincos3d", "sinusoid1d"])
def test_teacher_from_our_checkpoint_gives_the_source_encoder_output(tmp_path, pos_embed):
    source = videomae_student(1, pos_embed=pos_embed)
    save_lightning(source, tmp_path / "last.ckpt")
    teacher = VideoTeacher("tiny", **GEOMETRY, ckpt=str(tmp_path / "last.ckpt"))  # table kind read off the file
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = source.forward_encoder(video, torch.zeros(2, 8, dtype=torch.bool))
    out = teacher(video)
    assert out.shape == (2, 8, 192) and not out.requires_grad
    torch.testing.assert_close(out, expected)
    normed = VideoTeacher("tiny", **GEOMETRY, ckpt=str(tmp_path / "last.ckpt"), norm_targets=True)(video)
    torch.testing.assert_close(normed, torch.nn.functional.layer_norm(expected, (192,), eps=1e-6))
    assert not torch.allclose(VideoTeacher("tiny", **GEOMETRY, seed=1)(video), expected)  # weights came from ckpt


def test_frozen_unsaved_and_accepted_by_the_pretraining_module(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        teacher = VideoTeacher("tiny", **GEOMETRY)
    assert "RANDOM tiny video teacher" in caplog.text
    assert (teacher.frame_stride, teacher.tokens_per_frame, teacher.embed_dim) == (2, 4, 192)
    assert teacher.token_grid == (2, 2, 2)
    student = SurgVISTAStudent("tiny", **GEOMETRY, teacher_dim=192, pixel_decoder=False, image_decoder_depth=1)
    module = PretrainModule(student, teacher, SurgVISTALoss(0.0, 1.0), MaskGenerator("tube", 0.5), batch_size=2)
    module.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher.") for k in module.state_dict())
    out = module._shared_step(torch.randn(2, 3, 4, 32, 32), torch.Generator().manual_seed(0))
    assert out["loss"] == out["loss_distill"] and torch.isfinite(out["loss"]) and out["loss"].requires_grad
    wide = SurgVISTAStudent("tiny", **GEOMETRY, teacher_dim=384, pixel_decoder=False)
    with pytest.raises(ValueError, match=r"width 192 but the student expects 8 of width 384 \(token grids"):
        PretrainModule(wide, teacher, SurgVISTALoss(), MaskGenerator(), batch_size=2)


def test_bad_video_teacher_inputs_are_named(tmp_path):
    save_lightning(videomae_student(1), tmp_path / "last.ckpt")
    with pytest.raises(TeacherCheckpointError, match=r"video teacher checkpoint .*last\.ckpt"):
        VideoTeacher("small", **GEOMETRY, ckpt=str(tmp_path / "last.ckpt"))  # another width
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        VideoTeacher("tiny", **GEOMETRY, ckpt=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ValueError, match="frame_stride=1"):
        VideoTeacher("tiny", **GEOMETRY, frame_stride=1)


def tiny_hf_folder(path, **kw):
    """A tiny ``VideoMAEForPreTraining`` saved as a Hugging Face folder (``use_mean_pooling=False``: final norm)."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    cfg = VideoMAEConfig(
        image_size=32, num_frames=4, patch_size=16, tubelet_size=2, hidden_size=192, num_hidden_layers=2,
        num_attention_heads=3, intermediate_size=768, decoder_hidden_size=96, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=3, decoder_intermediate_size=384, use_mean_pooling=False, **kw,
    )  # fmt: skip
    torch.manual_seed(0)
    VideoMAEForPreTraining(cfg).save_pretrained(path)
    return path


def test_teacher_from_a_hf_videomae_folder_gives_its_encoder_output(tmp_path):
    from transformers import VideoMAEModel

    folder = tiny_hf_folder(tmp_path / "hf")
    teacher = VideoTeacher("tiny", **GEOMETRY, ckpt=str(folder))
    video = torch.randn(2, 3, 4, 32, 32)
    reference = VideoMAEModel.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = reference(pixel_values=video.transpose(1, 2)).last_hidden_state
    assert reference.layernorm is not None  # the encoder's final norm is part of its output
    torch.testing.assert_close(teacher(video), expected)
    assert teacher.state_dict() == {} and not teacher.training
    with pytest.raises(TeacherCheckpointError, match=r"img_size=32 \(the student's: 64\)"):
        VideoTeacher("tiny", img_size=64, num_frames=4, ckpt=str(folder))
    with pytest.raises(TeacherCheckpointError, match=r"hidden_size=192 \(model.teacher.preset gives 384\)"):
        VideoTeacher("small", **GEOMETRY, ckpt=str(folder))


def _fixed_batch_losses(module: PretrainModule, video: torch.Tensor, steps: int = 8) -> list[float]:
    opt = torch.optim.AdamW(module.student.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(steps):
        loss = module._shared_step(video, gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(loss.item())
    return seen


def test_two_stage_videomae_then_video_distillation(demo_root, tmp_path):
    from hydra.utils import instantiate

    from surgvista.checkpoints.read import torch_load
    from surgvista.run import train

    tiny = ["model.student.preset=tiny", "callbacks.rich_progress_bar=null", *small_demo_overrides(demo_root)]
    stage1 = compose("demo", "model=videomae", "model.student.pixel_decoder_depth=1", *tiny, out=tmp_path / "s1")
    train(stage1)
    last = tmp_path / "s1" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    stage2_args = ["model=video_distill", "model.teacher.preset=tiny", f"model.teacher.ckpt={last}", *tiny]
    stage2 = compose("demo", *stage2_args, "model.student.image_decoder_depth=1", out=tmp_path / "s2")
    train(stage2)
    rows = list(csv.DictReader((tmp_path / "s2" / "csv" / "version_0" / "metrics.csv").open()))
    losses = [float(r["train/loss_distill_step"]) for r in rows if r.get("train/loss_distill_step")]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    stage2_ckpt = torch_load(tmp_path / "s2" / "checkpoints" / "last.ckpt")
    assert not any(k.startswith("teacher.") for k in stage2_ckpt["state_dict"])  # the teacher is never saved

    torch.manual_seed(0)
    module = instantiate(stage2.model)
    assert isinstance(module.teacher, VideoTeacher) and module.student.decoder_vid is None
    frames, size = stage2.data.num_frames, stage2.data.input_size
    source = SurgVISTAStudent("tiny", size, frames, image_decoder=False, pixel_decoder_depth=1).eval()
    state = torch_load(last)["state_dict"]
    source.load_state_dict({k.removeprefix("student."): v for k, v in state.items()})
    video = torch.randn(2, 3, frames, size, size)
    with torch.no_grad():
        expected = source.forward_encoder(video, torch.zeros(2, source.patch_embed.num_patches, dtype=torch.bool))
    torch.testing.assert_close(module.teacher(video), expected)  # the stage-1 encoder's output
    seen = _fixed_batch_losses(module, video)
    assert all(torch.isfinite(torch.tensor(seen))) and sum(seen[-3:]) / 3 < seen[0], seen
