"""V-JEPA 2 network pieces against ``transformers``' ``VJEPA2Model`` (random tiny weights, fp32, no downloads).

The RoPE student and the Predictor, loaded from an HF ``VJEPA2Model`` folder or an official-layout ``.pt`` file,
must give HF's encoder states, context-only encodings and predictor outputs to 1e-5; our HF export must load into
``VJEPA2Model.from_pretrained`` with the same outputs.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")  # dev dependency: always installed by `make test`

from transformers import VJEPA2Config, VJEPA2Model  # noqa: E402
from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2RopeAttention  # noqa: E402

from surgvista.checkpoints.errors import CheckpointError, ExportError  # noqa: E402
from surgvista.checkpoints.vjepa import export_vjepa_hf, load_vjepa, read_vjepa  # noqa: E402
from surgvista.layers.masking import take  # noqa: E402
from surgvista.layers.rope import apply_rope, rope_part_dim, rope_positions  # noqa: E402
from surgvista.layers.vit import Block  # noqa: E402
from surgvista.models.predictor import Predictor  # noqa: E402
from surgvista.models.student import SurgVISTAStudent  # noqa: E402

ATOL = 1e-5
# Encoder head dim 12 (RoPE parts 4+4+4); predictor head dim 8 (parts 2+2+2, two channels left unrotated).
TINY = {
    "patch_size": 4,
    "crop_size": 16,
    "frames_per_clip": 4,
    "tubelet_size": 2,
    "hidden_size": 48,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "pred_hidden_size": 32,
    "pred_num_attention_heads": 4,
    "pred_num_hidden_layers": 2,
    "pred_num_mask_tokens": 10,
}
GRID = (2, 4, 4)
N = 32


def randomize(model: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, std, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    return model.eval()


@pytest.fixture(scope="module")
def hf_model() -> VJEPA2Model:
    torch.manual_seed(0)
    return randomize(VJEPA2Model(VJEPA2Config(**TINY, attn_implementation="eager")), seed=1)


@pytest.fixture(scope="module")
def hf_folder(hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vjepa") / "hf"
    hf_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ours(hf_folder) -> tuple[SurgVISTAStudent, Predictor]:
    weights = read_vjepa(hf_folder)
    student = SurgVISTAStudent("tiny", **weights.arch.student_kwargs(), drop_path_rate=0.0).eval()
    predictor = Predictor(**weights.arch.predictor_kwargs()).eval()
    reports = load_vjepa(weights, student, predictor)
    assert all(r.ok for r in reports.values())
    return student, predictor


def clip(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def ids(batch: int, count: int, seed: int, start: int = 0, sort: bool = True) -> torch.Tensor:
    """``count`` distinct token ids per row (a different draw per row), ascending unless ``sort=False``."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(N, generator=g)[start : start + count] for _ in range(batch)]
    out = torch.stack(rows)
    return out.sort(dim=1).values if sort else out


# ---------------------------------------------------------------------------------------------------- RoPE


def test_rope_positions_split_flat_ids_into_frame_row_column():
    t, h, w = torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(5), indexing="ij")
    got = rope_positions(torch.arange(60), (3, 4, 5))
    for a, b in zip(got, (t.flatten(), h.flatten(), w.flatten())):
        assert torch.equal(a, b)
    assert [rope_part_dim(d) for d in (12, 8, 64, 80, 88)] == [4, 2, 20, 26, 28]


@pytest.mark.parametrize("head_dim", [12, 8, 64])
def test_apply_rope_is_the_reference_rotation(head_dim):
    cfg = VJEPA2Config(**{**TINY, "hidden_size": 4 * head_dim})
    ref = VJEPA2RopeAttention(cfg, 4 * head_dim, 4)
    x = torch.randn(2, 4, 10, head_dim)
    keep = ids(2, 10, seed=3)
    expected = ref.apply_rotary_embeddings(x, ref.get_position_ids(x[:, 0], masks=keep))
    torch.testing.assert_close(apply_rope(x, keep, GRID), expected, rtol=0, atol=1e-6)
    full = torch.randn(2, 4, N, head_dim)
    expected = ref.apply_rotary_embeddings(full, ref.get_position_ids(full[:, 0]))
    torch.testing.assert_close(apply_rope(full, None, GRID), expected, rtol=0, atol=1e-6)
    rest = 3 * rope_part_dim(head_dim)  # channels past the three rotated parts stay as they are
    assert torch.equal(apply_rope(x, keep, GRID)[..., rest:], x[..., rest:])


def test_block_without_rope_ignores_positions_and_keeps_its_keys():
    plain = Block(32, 4, qkv_bias="fused")
    assert not any("rope" in k for k in plain.state_dict())
    x = torch.randn(2, 6, 32)
    assert torch.equal(plain(x, torch.arange(6).expand(2, 6)), plain(x))
    rope = Block(32, 4, qkv_bias="fused", rope=True, grid=GRID)
    assert list(rope.state_dict()) == list(plain.state_dict())
    with pytest.raises(ValueError, match="rope=True needs the token grid"):
        Block(32, 4, rope=True)


# ------------------------------------------------------------------------------------------------ student


def test_rope_student_has_the_official_encoder_keys_and_no_table():
    student = SurgVISTAStudent(
        "tiny", img_size=16, num_frames=4, patch_size=4, embed_dim=48, depth=2, num_heads=4,
        image_decoder=False, pixel_decoder=False, pos_embed="rope", qkv_bias="fused", init="trunc_normal",
    )  # fmt: skip
    block = [f"blocks.0.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for p in
             ("weight", "bias")]  # fmt: skip
    keys = list(student.state_dict())
    assert keys[:2] == ["patch_embed.proj.weight", "patch_embed.proj.bias"] and keys[2:14] == block
    assert keys[-2:] == ["norm.weight", "norm.bias"] and len(keys) == 2 + 2 * 12 + 2
    assert student(clip(), torch.zeros(2, N, dtype=torch.bool)) == (None, None)
    # V-JEPA init: trunc-normal 0.02, block i's output projections divided by sqrt(2i)
    assert abs(student.blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.004
    ratio = student.blocks[1].attn.proj.weight.std() / student.blocks[0].attn.proj.weight.std()
    assert abs(ratio.item() - 0.5**0.5) < 0.15
    decoders = SurgVISTAStudent("tiny", img_size=16, num_frames=4, patch_size=4, pos_embed="rope")
    assert "pos_embed" not in decoders.state_dict() and "pos_embed_vid" in decoders.state_dict()


def test_encoder_matches_hf_on_the_full_clip(hf_model, ours):
    student, _ = ours
    video = clip()
    with torch.no_grad():
        ref = hf_model(video.transpose(1, 2), skip_predictor=True).last_hidden_state
        torch.testing.assert_close(student.encode(video), ref, rtol=0, atol=ATOL)


def test_context_only_encoding_is_hf_layers_on_the_kept_tokens(hf_model, ours):
    student, _ = ours
    video, keep = clip(1), ids(2, 12, seed=4)
    with torch.no_grad():
        x = take(hf_model.encoder.embeddings(video.transpose(1, 2)), keep)
        for layer in hf_model.encoder.layer:
            x = layer(x, keep)[0]
        ref = hf_model.encoder.layernorm(x)
        torch.testing.assert_close(student.encode(video, keep), ref, rtol=0, atol=ATOL)
        mask = torch.ones(2, N, dtype=torch.bool).scatter(1, keep, False)
        torch.testing.assert_close(student.forward_encoder(video, mask), ref, rtol=0, atol=ATOL)
    student.set_grad_checkpointing(True)  # positions travel through activation checkpointing too
    try:
        torch.testing.assert_close(student.encode(video, keep).detach(), ref, rtol=0, atol=ATOL)
    finally:
        student.set_grad_checkpointing(False)


# ---------------------------------------------------------------------------------------------- predictor


@pytest.mark.parametrize(
    ("seed", "n_ctx", "n_tgt", "mask_index", "sort"),
    [(0, 20, 12, 1, True), (1, 8, 24, 0, True), (2, 16, 16, 13, False), (3, 31, 1, 7, True)],
)
def test_predictor_matches_hf(hf_model, ours, seed, n_ctx, n_tgt, mask_index, sort):
    student, predictor = ours
    video = clip(seed)
    ctx, tgt = ids(2, n_ctx, seed, sort=sort), ids(2, n_tgt, seed, start=n_ctx, sort=sort)
    tokens = hf_model.predictor.embeddings.mask_tokens
    saved = tokens.detach().clone()
    with torch.no_grad():
        tokens[1] = saved[mask_index % 10]  # HF always predicts with mask token 1
        try:
            ref = hf_model(video.transpose(1, 2), context_mask=[ctx], target_mask=[tgt]).predictor_output
        finally:
            tokens.copy_(saved)
        out = predictor(take(student.encode(video), ctx), ctx, tgt, mask_index=mask_index)
    torch.testing.assert_close(out, ref.last_hidden_state, rtol=0, atol=ATOL)


def test_predictor_checks_its_inputs():
    predictor = Predictor(48, GRID, pred_dim=32, depth=1, num_heads=4)
    assert not torch.stack(list(predictor.mask_tokens)).any()  # zero-initialised mask tokens
    with pytest.raises(ValueError, match=r"context \(2, 5, 48\) needs context_ids"):
        predictor(torch.randn(2, 5, 48), torch.arange(4).expand(2, 4), torch.arange(3).expand(2, 3))


# ------------------------------------------------------------------------------------------ checkpoint IO


def official_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict as V-JEPA 2's training saves it: DDP ``module.`` and wrapper ``backbone.`` prefixes."""
    return {f"module.backbone.{k}": v.clone() for k, v in module.state_dict().items()}


def test_official_pt_layout_loads_strictly_and_names_a_bad_key(tmp_path, ours):
    # Layout of facebookresearch/vjepa2: src/models/vision_transformer.py (encoder: patch_embed.proj, blocks.N.{norm1,
    # attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm), src/models/predictor.py (predictor_embed, mask_tokens.i,
    # predictor_blocks.N..., predictor_norm, predictor_proj), app/vjepa/train.py save_checkpoint (the dict below).
    student, predictor = ours
    target = randomize(SurgVISTAStudent("tiny", **read_vjepa_arch(student, predictor), drop_path_rate=0.0), 5)
    ckpt = {
        "encoder": official_state(student),
        "predictor": official_state(predictor),
        "target_encoder": official_state(target),
        "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "scaler": None,
        "epoch": 3,
        "loss": 0.25,
        "batch_size": 2,
        "world_size": 1,
        "lr": 1e-4,
    }
    torch.save(ckpt, tmp_path / "vitl.pt")
    weights = read_vjepa(tmp_path / "vitl.pt", num_heads=4, pred_heads=4, img_size=16, num_frames=4)
    arch = weights.arch
    assert (arch.embed_dim, arch.depth, arch.mlp_ratio, arch.pred_dim, arch.pred_depth, arch.num_mask_tokens) == (
        48, 2, 4.0, 32, 2, 10,
    )  # fmt: skip
    fresh = SurgVISTAStudent("tiny", **arch.student_kwargs(), drop_path_rate=0.0).eval()
    fresh_pred = Predictor(**arch.predictor_kwargs()).eval()
    load_vjepa(weights, fresh, fresh_pred, part="target_encoder")
    video, ctx, tgt = clip(2), ids(2, 10, 6), ids(2, 6, 6, start=10)
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode(video), target.eval().encode(video), rtol=0, atol=0)
        expected = predictor(take(student.encode(video), ctx), ctx, tgt, 2)
        torch.testing.assert_close(fresh_pred(take(student.encode(video), ctx), ctx, tgt, 2), expected, rtol=0, atol=0)

    ckpt["encoder"]["module.backbone.blocks.0.attn.q_bias"] = torch.zeros(48)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: encoder key\(s\) with no place .*attn\.q_bias") as err:
        read_vjepa(tmp_path / "bad.pt")
    assert "\n" not in str(err.value)
    del ckpt["encoder"]["module.backbone.blocks.0.attn.q_bias"], ckpt["encoder"]["module.backbone.norm.bias"]
    torch.save(ckpt, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match=r"short\.pt \[encoder\]: checkpoint does not fit SurgVISTAStudent"):
        load_vjepa(read_vjepa(tmp_path / "short.pt", num_heads=4, img_size=16, num_frames=4), fresh)
    torch.save({"model": student.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not a V-JEPA 2 checkpoint"):
        read_vjepa(tmp_path / "other.pt")


def read_vjepa_arch(student: SurgVISTAStudent, predictor: Predictor) -> dict:
    """The student arguments of ``student`` (for a second encoder of the same shape)."""
    return {
        "img_size": student.img_size, "num_frames": student.num_frames, "patch_size": student.patch_size,
        "embed_dim": student.embed_dim, "depth": len(student.blocks), "num_heads": 4, "pos_embed": "rope",
        "qkv_bias": "fused", "image_decoder": False, "pixel_decoder": False,
    }  # fmt: skip


def test_hf_folder_reads_with_its_config(hf_folder, hf_model):
    weights = read_vjepa(hf_folder)
    assert weights.target_encoder is None and weights.arch.token_grid == GRID
    assert (weights.arch.num_heads, weights.arch.pred_heads, weights.arch.num_mask_tokens) == (4, 4, 10)
    hf_qkv = [hf_model.state_dict()[f"encoder.layer.1.attention.{n}.weight"] for n in ("query", "key", "value")]
    assert torch.equal(weights.encoder["blocks.1.attn.qkv.weight"], torch.cat(hf_qkv))
    assert torch.equal(weights.predictor["mask_tokens.3"], hf_model.predictor.embeddings.mask_tokens[3])


def test_hf_export_round_trip(tmp_path, ours):
    student, predictor = ours
    out = export_vjepa_hf(student, predictor, tmp_path / "export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left behind
    hf = VJEPA2Model.from_pretrained(out, attn_implementation="eager").eval()
    video, ctx, tgt = clip(7), ids(2, 14, 8), ids(2, 10, 8, start=14)
    with torch.no_grad():
        ref = hf(video.transpose(1, 2), context_mask=[ctx], target_mask=[tgt])
        torch.testing.assert_close(ref.last_hidden_state, student.encode(video), rtol=0, atol=ATOL)
        pred = predictor(take(student.encode(video), ctx), ctx, tgt, mask_index=1)
        torch.testing.assert_close(ref.predictor_output.last_hidden_state, pred, rtol=0, atol=ATOL)
    back = read_vjepa(out)
    for name, value in {**student.state_dict(), **predictor.state_dict()}.items():
        assert torch.equal((back.encoder | back.predictor)[name], value), name
    with pytest.raises(ExportError, match="already exists and is not empty"):
        export_vjepa_hf(student, predictor, out)
    table = SurgVISTAStudent("tiny", img_size=16, num_frames=4, patch_size=4, embed_dim=48, depth=2, num_heads=4)
    with pytest.raises(ExportError, match="needs a RoPE encoder"):
        export_vjepa_hf(table, predictor, tmp_path / "table")


def test_load_backbone_takes_a_rope_student_and_refuses_a_table_encoder():
    from surgvista.checkpoints.load import load_backbone

    kw = {"img_size": 16, "num_frames": 4, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 4}
    source = randomize(SurgVISTAStudent("tiny", **kw, pos_embed="rope", qkv_bias="fused"), 9)  # with decoders
    target = SurgVISTAStudent("tiny", **kw, pos_embed="rope", qkv_bias="fused")
    for name in ("pos_embed_img", "pos_embed_vid"):  # fixed decoder tables: recomputed by the loader
        getattr(source, name).data.copy_(getattr(target, name))
    report = load_backbone(source.state_dict(), target)
    assert report.ok and report.pos_embed == "3-D RoPE (no encoder table)"
    video, mask = clip(3), torch.zeros(2, N, dtype=torch.bool)
    mask[:, ::2] = True
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(video, mask), source(video, mask), rtol=0, atol=0)
    table = SurgVISTAStudent("tiny", **kw, image_decoder=False, pixel_decoder=False, qkv_bias="fused")
    with pytest.raises(CheckpointError, match="trained with a sincos3d table but the model uses rope"):
        load_backbone(table.state_dict(), target)
