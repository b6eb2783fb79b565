"""Teacher layout, strict loading and outputs."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import DATA

from surgvista.models.teacher import ImageTeacher, TeacherCheckpointError


def tiny_teacher(**kw) -> ImageTeacher:
    return ImageTeacher("tiny", img_size=32, patch_size=16, **kw)


def test_large_layout_matches_reference_keys():
    with torch.device("meta"):
        teacher = ImageTeacher("large")
    expected = [line.split() for line in (DATA / "keys_teacher_large.txt").read_text().splitlines()]
    actual = [[k, "x".join(map(str, v.shape))] for k, v in teacher.endossl_state_dict().items()]
    assert actual == expected
    assert sum(v.numel() for v in teacher.endossl_state_dict().values()) == 303_300_608


def test_block_layer_norms_use_eps_1e5_and_cls_has_no_position():
    teacher = tiny_teacher()
    assert teacher.vit.blocks[0].norm1.eps == 1e-5
    assert teacher.vit.pos_embed.shape == (1, 4, 192)  # patch tokens only: CLS gets no position embedding


def test_strict_load_round_trip_with_wrappers(tmp_path):
    source = tiny_teacher(seed=1)
    state = {f"backbone.{k}": v for k, v in source.endossl_state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.zeros(10, 192), torch.zeros(10)
    path = tmp_path / "teacher.pth"
    torch.save({"model": state}, path)
    loaded = tiny_teacher(ckpt=str(path), seed=2)
    video = torch.randn(2, 3, 4, 32, 32)
    torch.testing.assert_close(loaded(video), source(video))
    assert not torch.allclose(tiny_teacher(seed=2)(video), source(video))


def test_missing_block_key_is_named(tmp_path):
    state = tiny_teacher().endossl_state_dict()
    del state["blocks.1.attn.k.weight"]
    state["blocks.1.attn.kk.weight"] = torch.zeros(192, 192)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(TeacherCheckpointError) as err:
        tiny_teacher(ckpt=str(path))
    msg = str(err.value)
    assert str(path) in msg and "missing key: blocks.1.attn.k.weight" in msg
    assert "unexpected key: blocks.1.attn.kk.weight" in msg


def test_wrong_shape_and_missing_file_are_errors(tmp_path):
    state = tiny_teacher().endossl_state_dict()
    state["pos_embed"] = torch.zeros(1, 5, 192)
    with pytest.raises(TeacherCheckpointError, match="wrong shape: pos_embed"):
        tiny_teacher().load_endossl_state_dict(state)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        tiny_teacher(ckpt=str(tmp_path / "nope.pth"))


def test_output_is_pre_norm_patch_tokens_of_every_stride_frame():
    teacher = tiny_teacher()
    video = torch.randn(2, 3, 4, 32, 32)
    out = teacher(video)
    assert out.shape == (2, 2 * 4, 192)
    vit = teacher.vit
    frames = video[:, :, ::2].transpose(1, 2).reshape(4, 3, 32, 32)
    x = vit.patch_embed(frames) + vit.pos_embed
    x = torch.cat([vit.cls_token.expand(4, -1, -1), x], dim=1)
    for blk in vit.blocks:
        x = blk(x)
    torch.testing.assert_close(out, x[:, 1:].reshape(2, 8, 192))
    normed = tiny_teacher(norm_targets=True)(video)
    torch.testing.assert_close(normed, torch.nn.functional.layer_norm(out, (192,), eps=1e-6))


def test_frozen_eval_and_invisible_to_checkpoints(caplog):
    with caplog.at_level(logging.WARNING):
        teacher = tiny_teacher()
    assert "RANDOM tiny teacher" in caplog.text
    parent = torch.nn.Module()
    parent.teacher = teacher
    parent.head = torch.nn.Linear(2, 2)
    parent.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert set(parent.state_dict()) == {"head.weight", "head.bias"}
