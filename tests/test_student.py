"""Student architecture against the reference layout and numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import DATA

from surgvista.layers.position import sincos_3d
from surgvista.layers.vit import Attention
from surgvista.models.student import SurgVISTAStudent
from surgvista.modules.pretrain import param_groups


@pytest.fixture(scope="module")
def base_student() -> SurgVISTAStudent:
    torch.manual_seed(0)
    return SurgVISTAStudent("base")


def test_base_state_dict_matches_reference_keys_line_for_line(base_student):
    expected = [line.split() for line in (DATA / "keys_student_base.txt").read_text().splitlines()]
    actual = [[k, "x".join(map(str, v.shape))] for k, v in base_student.state_dict().items()]
    assert len(actual) == 255
    assert actual == expected


@pytest.mark.parametrize(
    ("preset", "total", "trainable"),
    [
        ("small", 35_614_336, 33_808_000),
        ("base", 100_858_624, 98_450_176),
        ("large", 325_130_240, 322_119_680),
        ("huge", 661_153_024, 657_540_352),
    ],
)
def test_parameter_counts(preset, total, trainable):
    with torch.device("meta"):
        model = SurgVISTAStudent(preset)
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert sum(v.numel() for v in model.state_dict().values()) == total


def test_optimizer_groups_match_reference(base_student):
    decay, no_decay = param_groups(base_student, 0.05)
    assert (len(decay["params"]), sum(p.numel() for p in decay["params"])) == (79, 98_304_768)
    assert (len(no_decay["params"]), sum(p.numel() for p in no_decay["params"])) == (173, 145_408)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    assert id(base_student.mask_token_img) in ids and id(base_student.mask_token_vid) in ids  # quirk B9


def closed_form(dim: int, t: int, h: int, w: int) -> np.ndarray:
    def s(p, d):
        k = np.arange(d // 2)
        omega = 10000.0 ** (-k / (d / 2))
        return np.concatenate([np.sin(p * omega), np.cos(p * omega)])

    return np.concatenate([s(t, dim // 4), s(w, 3 * dim // 8), s(h, 3 * dim // 8)])


def test_position_table_closed_form_and_layout():
    table = sincos_3d(768, (8, 14, 14))[0].numpy()
    assert table.shape == (1568, 768) and table.dtype == np.float32
    for t, h, w in [(0, 0, 0), (3, 5, 11), (7, 13, 13), (2, 0, 9)]:
        np.testing.assert_allclose(table[t * 196 + h * 14 + w], closed_form(768, t, h, w), atol=1e-6)
    grid = table.reshape(8, 14, 14, 768)
    # temporal block depends only on t, the next on the column w, the last on the row h
    assert np.allclose(grid[:, :, :, :192], grid[:, :1, :1, :192])
    assert np.allclose(grid[:, :, :, 192:480], grid[:1, :1, :, 192:480])
    assert np.allclose(grid[:, :, :, 480:], grid[:1, :, :1, 480:])
    assert not np.allclose(grid[0, 0, 0, 192:480], grid[0, 0, 1, 192:480])


def test_position_tables_are_frozen_parameters(base_student):
    names = {n for n, p in base_student.named_parameters() if not p.requires_grad}
    assert names == {"pos_embed", "pos_embed_img", "pos_embed_vid"}
    torch.testing.assert_close(base_student.pos_embed_img, sincos_3d(384, (8, 14, 14)))


def test_initialisation(base_student):
    s = base_student
    assert torch.all(s.blocks[0].attn.q_bias == 0) and torch.all(s.blocks[5].attn.v_bias == 0)
    assert torch.all(s.decoder_vid.blocks[1].mlp.fc1.bias == 0)
    assert torch.all(s.norm.weight == 1) and torch.all(s.decoder_img.norm.bias == 0)
    for tok in (s.mask_token_img, s.mask_token_vid):
        assert tok.abs().max() <= 0.02 and tok.std() > 0.005
    w = s.blocks[0].attn.qkv.weight  # xavier over the fused (3D x D) matrix
    bound = math.sqrt(6 / (768 + 3 * 768))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert 0.010 < s.patch_embed.proj.weight.std() < 0.02  # PyTorch's default Conv3d init (≈0.0147)


def test_drop_path_rates(base_student):
    enc = [getattr(b.drop_path, "drop_prob", 0.0) for b in base_student.blocks]
    np.testing.assert_allclose(enc, np.linspace(0, 0.1, 12), atol=1e-7)
    vid = [getattr(b.drop_path, "drop_prob", 0.0) for b in base_student.decoder_vid.blocks]
    np.testing.assert_allclose(vid, [0, 1 / 30, 2 / 30, 0.1], atol=1e-7)
    img = [getattr(b.drop_path, "drop_prob", 0.0) for b in base_student.decoder_img.blocks]
    np.testing.assert_allclose(img, [0, 0.1], atol=1e-7)


def test_attention_equals_explicit_softmax_with_divided_bias():
    torch.manual_seed(0)
    attn = Attention(64, 4)
    torch.nn.init.normal_(attn.q_bias)
    torch.nn.init.normal_(attn.v_bias)
    x = torch.randn(2, 10, 64)
    w = attn.qkv.weight
    q = x @ w[:64].T + attn.q_bias
    k = x @ w[64:128].T
    v = x @ w[128:].T + attn.v_bias

    def heads(t):
        return t.view(2, 10, 4, 16).transpose(1, 2)

    a = (heads(q) * 16**-0.5) @ heads(k).transpose(-2, -1)
    out = (a.softmax(-1) @ heads(v)).transpose(1, 2).reshape(2, 10, 64)
    torch.testing.assert_close(attn(x), attn.proj(out), atol=1e-5, rtol=1e-5)


def test_forward_shapes_and_masked_token_order():
    torch.manual_seed(0)
    s = SurgVISTAStudent("tiny", img_size=64, num_frames=4, teacher_dim=32, drop_path_rate=0.0).eval()
    video = torch.randn(2, 3, 4, 64, 64)
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[:, [1, 2, 5, 17, 18, 30]] = True
    img, vid = s(video, mask)
    assert img.shape == (2, 6, 32) and vid.shape == (2, 6, 2 * 16 * 16 * 3)
    # Changing only a visible token's pixels changes predictions; predictions are per-masked token.
    video2 = video.clone()
    video2[:, :, :2, :16, :16] += 1.0  # token 0 (visible)
    assert not torch.allclose(s(video2, mask)[1], vid)


def test_decoders_can_be_switched_off_for_videomae():
    s = SurgVISTAStudent("tiny", img_size=32, num_frames=2, image_decoder=False)
    assert not any(k.startswith(("decoder_img", "down_img", "mask_token_img")) for k in s.state_dict())
    img, vid = s(torch.randn(1, 3, 2, 32, 32), torch.tensor([[True, False, True, False]]))
    assert img is None and vid.shape == (1, 2, 1536)
    with pytest.raises(ValueError, match="preset"):
        SurgVISTAStudent("gigantic")


def test_grad_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    s = SurgVISTAStudent("tiny", img_size=32, num_frames=4, teacher_dim=16, drop_path_rate=0.0)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = torch.tensor([[True, False, True, True] * 2] * 2)
    grads = []
    for enable in (False, True):
        s.zero_grad()
        s.set_grad_checkpointing(enable)
        img, vid = s(video, mask)
        (img.square().mean() + vid.square().mean()).backward()
        grads.append(s.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
