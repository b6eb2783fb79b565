"""load_backbone: every accepted layout, key-diff reports, refusals, position-table handling."""

from __future__ import annotations

import argparse
import re

import pytest
import timm
import torch
from torch import nn

from surgvista.checkpoints.errors import CheckpointError
from surgvista.checkpoints.grids import interpolate_pos_embed
from surgvista.checkpoints.load import load_backbone
from surgvista.checkpoints.run_folder import run_config, run_config_file
from surgvista.layers.position import sincos_3d, sinusoid_table
from surgvista.models.classifier import VideoClassifier
from surgvista.models.student import SurgVISTAStudent
from surgvista.models.teacher import ImageTeacher, endossl_to_timm

GEOM = {"img_size": 32, "num_frames": 4, "patch_size": 8}
ARCH = {"embed_dim": 64, "depth": 2, "num_heads": 4}


def student(pos_embed: str = "sincos3d", image_decoder: bool = True, seed: int = 0, **kw) -> SurgVISTAStudent:
    torch.manual_seed(seed)
    model = SurgVISTAStudent(
        "tiny",
        **GEOM,
        **ARCH,
        image_decoder=image_decoder,
        image_decoder_dim=32,
        image_decoder_depth=1,
        image_decoder_heads=2,
        teacher_dim=48,
        pixel_decoder_dim=32,
        pixel_decoder_depth=1,
        pixel_decoder_heads=2,
        pos_embed=pos_embed,
        drop_path_rate=0.0,
        **kw,
    )
    randomize(model)
    return model.eval()


def classifier(pos_embed: str = "sincos3d", num_classes: int = 5, **kw) -> VideoClassifier:
    geom = {**GEOM, **kw}
    return VideoClassifier(num_classes, "tiny", **geom, **ARCH, pos_embed=pos_embed, drop_path_rate=0.0).eval()


def randomize(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial values everywhere (biases, norms, q/v biases), fixed tables untouched."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "norm" in name and "weight" in name else 0))


def encoder_out(model: nn.Module, video: torch.Tensor) -> torch.Tensor:
    if isinstance(model, SurgVISTAStudent):
        mask = torch.zeros(video.shape[0], model.patch_embed.num_patches, dtype=torch.bool)
        x = model.patch_embed(video) + model.pos_embed
        return nn.Sequential(*model.blocks)(x[~mask].reshape(video.shape[0], -1, x.shape[-1]))
    return model.forward_features(video)


VIDEO = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))


def videomae_original(model: SurgVISTAStudent) -> dict[str, torch.Tensor]:
    """The VideoMAE/MVD/UMT pre-training layout: ``encoder.*``, ``encoder_to_decoder`` (no bias), ``decoder.*``."""
    out = {}
    for k, v in model.state_dict().items():
        if k in ("pos_embed", "pos_embed_vid"):
            continue
        if k.startswith("decoder_vid."):
            out["decoder." + k.removeprefix("decoder_vid.")] = v
        elif k == "down_vid.weight":
            out["encoder_to_decoder.weight"] = v
        elif k == "mask_token_vid":
            out["mask_token"] = v
        elif k != "down_vid.bias":
            out["encoder." + k] = v
    return out


_HF_NAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


def _hf_blocks(sd, ours: str, theirs: str, depth: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(depth):
        b, h = f"{ours}{i}.", f"{theirs}{i}."
        q, k, v = sd[b + "attn.qkv.weight"].chunk(3)
        out |= {
            h + "attention.attention.query.weight": q,
            h + "attention.attention.key.weight": k,
            h + "attention.attention.value.weight": v,
            h + "attention.attention.query.bias": sd[b + "attn.q_bias"],
            h + "attention.attention.value.bias": sd[b + "attn.v_bias"],
        }
        for mine, hf in _HF_NAMES.items():
            for kind in ("weight", "bias"):
                out[f"{h}{hf}.{kind}"] = sd[f"{b}{mine}.{kind}"]
    return out


def hf_encoder(model: SurgVISTAStudent, prefix: str = "") -> dict[str, torch.Tensor]:
    """Our encoder in the ``transformers.VideoMAEModel`` layout (written by hand, independent of the exporter)."""
    sd = model.state_dict()
    out = {
        f"{prefix}embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        f"{prefix}embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        f"{prefix}layernorm.weight": sd["norm.weight"],
        f"{prefix}layernorm.bias": sd["norm.bias"],
    }
    return out | _hf_blocks(sd, "blocks.", f"{prefix}encoder.layer.", ARCH["depth"])


def hf_pretraining(model: SurgVISTAStudent) -> dict[str, torch.Tensor]:
    """``transformers.VideoMAEForPreTraining`` layout."""
    sd = model.state_dict()
    out = hf_encoder(model, "videomae.") | _hf_blocks(sd, "decoder_vid.blocks.", "decoder.decoder_layers.", 1)
    out |= {"encoder_to_decoder.weight": sd["down_vid.weight"], "mask_token": sd["mask_token_vid"]}
    return out | {
        f"decoder.{k}": sd[f"decoder_vid.{k}"] for k in ("norm.weight", "norm.bias", "head.weight", "head.bias")
    }


def layouts(tmp_path):
    """The 8 accepted layouts, each as (name, source, reference student, expected layout, pos kind)."""
    s3 = student("sincos3d")
    s1 = student("sinusoid1d", image_decoder=False, seed=5)
    sd = s3.state_dict()
    lightning = {
        "state_dict": {f"student.{k}": v for k, v in sd.items()},
        "epoch": 2,
        "global_step": 10,
        "pytorch-lightning_version": "2.5.0",
        "hyper_parameters": {"base_lr": 1.5e-4},
    }
    torch.save(lightning, tmp_path / "last.ckpt")
    torch.save(
        {"model": sd, "args": argparse.Namespace(model="pretrain_masked_video_student_base_patch16_224"), "epoch": 199},
        tmp_path / "checkpoint-199.pth",
    )
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "exported.safetensors"))
    encoder_only = {
        k: v
        for k, v in sd.items()
        if k.startswith(("patch_embed", "blocks", "norm", "pos_embed")) and not k.startswith(("pos_embed_",))
    }
    torch.save(encoder_only, tmp_path / "SurgVISTA.pth")
    torch.save({"module": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "deepspeed.pt")
    torch.save({"model": videomae_original(s1)}, tmp_path / "videomae.pth")
    hf_model = hf_encoder(s1)
    hf_pre = hf_pretraining(s1)
    return [
        ("lightning", tmp_path / "last.ckpt", s3, "lightning/surgvista", "sincos3d"),
        ("official", tmp_path / "checkpoint-199.pth", s3, "model/surgvista", "sincos3d"),
        ("exported", tmp_path / "exported.safetensors", s3, "safetensors/surgvista", "sincos3d"),
        ("encoder_only", tmp_path / "SurgVISTA.pth", s3, "raw/surgvista", "sincos3d"),
        ("deepspeed", tmp_path / "deepspeed.pt", s3, "module/surgvista", "sincos3d"),
        ("videomae", tmp_path / "videomae.pth", s1, "model/videomae", "sinusoid1d"),
        ("hf_model", hf_model, s1, "raw/hf", "sinusoid1d"),
        ("hf_pretraining", hf_pre, s1, "raw/hf", "sinusoid1d"),
    ]


@pytest.fixture(scope="module")
def all_layouts(tmp_path_factory):
    return layouts(tmp_path_factory.mktemp("layouts"))


@pytest.mark.parametrize("index", range(8))
def test_every_layout_loads_into_a_classifier_with_no_unexpected_keys(all_layouts, index):
    name, source, ref, layout, kind = all_layouts[index]
    model = classifier(kind)
    report = load_backbone(source, model)
    assert report.layout == layout, name
    assert report.unexpected == [] and report.missing == [] and report.mismatched == []
    assert sorted(report.expected_missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert len(report.loaded) == 2 + 13 * ARCH["depth"]
    torch.testing.assert_close(encoder_out(model, VIDEO), encoder_out(ref, VIDEO), rtol=0, atol=0)
    assert "layout" in str(report)


@pytest.mark.parametrize("index", [0, 1, 2, 4, 5, 7])
def test_pretraining_layouts_load_into_a_student(all_layouts, index):
    name, source, ref, _, kind = all_layouts[index]
    model = student(kind, image_decoder=kind == "sincos3d", seed=9)
    report = load_backbone(source, model)
    assert report.unexpected == [] and report.missing == [], name
    target = dict(ref.state_dict())
    if kind == "sinusoid1d":  # VideoMAE's and HF's encoder_to_decoder have no bias: loaded as 0
        assert torch.count_nonzero(model.down_vid.bias) == 0
        target.pop("down_vid.bias")
    got = model.state_dict()
    for key, value in target.items():
        assert torch.equal(got[key], value), key


def test_mvd_and_umt_originals():
    s3, s1 = student("sincos3d"), student("sinusoid1d", image_decoder=False, seed=5)
    # MVD: DeepSpeed container, encoder./decoder. keys, a stored 3-D sin-cos encoder table.
    mvd = {"module": {**videomae_original(s3), "encoder.pos_embed": s3.pos_embed.detach()}}
    mvd["module"] = {k: v for k, v in mvd["module"].items() if "_img" not in k}
    report = load_backbone(mvd, model := classifier("sincos3d"))
    assert report.layout == "module/videomae" and report.ok and "sincos3d" in report.pos_embed
    torch.testing.assert_close(encoder_out(model, VIDEO), encoder_out(s3, VIDEO), rtol=0, atol=0)
    # Without its table an MVD file cannot show its kind: declare it.
    no_table = {k: v for k, v in mvd["module"].items() if k != "encoder.pos_embed"}
    with pytest.raises(CheckpointError, match="sinusoid1d table but the model uses sincos3d"):
        load_backbone(no_table, classifier("sincos3d"))
    assert load_backbone(no_table, classifier("sincos3d"), pos_embed_kind="sincos3d").ok
    # UMT: backbone./model. prefixes and a CLIP-alignment decoder that no model of ours has.
    umt = {f"backbone.{k}": v for k, v in videomae_original(s1).items()}
    umt |= {"backbone.clip_decoder.0.head.weight": torch.zeros(4, 4), "backbone.clip_pos_embed": torch.zeros(1, 4)}
    report = load_backbone({"model": umt}, model := classifier("sinusoid1d"))
    assert report.ok and report.unexpected == [] and "backbone.clip_pos_embed" in report.ignored
    torch.testing.assert_close(encoder_out(model, VIDEO), encoder_out(s1, VIDEO), rtol=0, atol=0)


def test_lightning_checkpoint_keeps_hyper_parameters(all_layouts):
    report = load_backbone(all_layouts[0][1], student(seed=4))
    assert report.meta["hyper_parameters"] == {"base_lr": 1.5e-4} and report.meta["epoch"] == 2


class Evil:
    """An arbitrary pickled class: ``weights_only=True`` must still refuse it."""


def test_namespace_checkpoint_loads_without_unrestricted_unpickling(all_layouts, tmp_path):
    report = load_backbone(all_layouts[1][1], classifier())
    assert report.meta["args"]["model"].startswith("pretrain_masked")

    torch.save({"model": student().state_dict(), "evil": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth: contains pickled objects of type .*Evil") as err:
        load_backbone(tmp_path / "evil.pth", classifier())
    assert "weights_only" not in str(err.value)  # never advise unrestricted unpickling


def test_renamed_block_key_is_an_error_naming_it():
    sd = dict(student().state_dict())
    sd["blocks.1.mlp.fc9.weight"] = sd.pop("blocks.1.mlp.fc1.weight")
    with pytest.raises(CheckpointError) as err:
        load_backbone({"model": sd}, classifier())
    assert "blocks.1.mlp.fc9.weight" in str(err.value) and "blocks.1.mlp.fc1.weight" in str(err.value)
    report = load_backbone({"model": sd}, classifier(), strict=False)
    assert report.unexpected == ["blocks.1.mlp.fc9.weight"] and report.missing == ["blocks.1.mlp.fc1.weight"]


def test_width_and_depth_mismatch_name_keys_and_shapes():
    sd = student().state_dict()
    wide = VideoClassifier(5, "tiny", **GEOM, embed_dim=128, depth=2, num_heads=4)
    with pytest.raises(CheckpointError, match=r"width: checkpoint 64, model 128") as err:
        load_backbone({"model": sd}, wide)
    assert re.search(r"blocks\.0\.attn\.qkv\.weight: checkpoint \(192, 64\), model \(384, 128\)", str(err.value))
    deep = VideoClassifier(5, "tiny", **GEOM, embed_dim=64, depth=3, num_heads=4)
    with pytest.raises(CheckpointError, match=r"depth: checkpoint 2, model 3 blocks"):
        load_backbone({"model": sd}, deep)


def test_position_kind_mismatch_is_refused_unless_not_strict(all_layouts):
    with pytest.raises(CheckpointError, match="trained with a sincos3d table but the model uses sinusoid1d"):
        load_backbone(all_layouts[1][1], classifier("sinusoid1d"))
    with pytest.raises(CheckpointError, match="sinusoid1d table but the model uses sincos3d"):
        load_backbone(all_layouts[6][1], classifier("sincos3d"))
    report = load_backbone(all_layouts[1][1], classifier("sinusoid1d"), strict=False)
    assert any(n.startswith("WARNING position embedding mismatch") for n in report.notes)


def test_fine_tuned_head_loads_when_it_fits_and_stays_fresh_otherwise():
    src = classifier(num_classes=5)
    randomize(src, seed=7)
    dst = classifier(num_classes=5)
    report = load_backbone({"model": src.state_dict()}, dst)
    assert "head.weight" in report.loaded and torch.equal(dst.head.weight, src.head.weight)
    other = classifier(num_classes=7)
    report = load_backbone({"module": src.state_dict()}, other)
    assert "head.weight" in report.expected_missing and torch.count_nonzero(other.head.weight) == 0


def test_run_config_is_found_next_to_the_checkpoint_nearest_folder_first(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("a: 1\n")
    assert run_config_file(run / "checkpoints" / "last.ckpt") == run / "config.yaml"
    assert run_config_file(run / "last.ckpt") == run / "config.yaml"
    assert run_config(run / "checkpoints" / "last.ckpt") == {"a": 1}
    (run / "checkpoints" / "config.yaml").write_text("a: 2\n")
    assert run_config(run / "checkpoints" / "last.ckpt") == {"a": 2}
    assert run_config_file(tmp_path / "elsewhere" / "x.ckpt") is None and run_config(tmp_path / "x.ckpt") == {}


# ------------------------------------------------------------------------ position tables at new geometry


def test_fixed_tables_are_recomputed_for_new_frames_and_resolution(all_layouts):
    big = classifier("sincos3d", num_frames=8, img_size=48)
    load_backbone(all_layouts[1][1], big)
    torch.testing.assert_close(big.pos_embed, sincos_3d(64, (4, 6, 6)), rtol=0, atol=0)
    assert big(torch.randn(1, 3, 8, 48, 48)).shape == (1, 5)
    s = student("sincos3d", seed=2)
    s_big = SurgVISTAStudent(
        "tiny",
        img_size=48,
        num_frames=8,
        patch_size=8,
        **ARCH,
        image_decoder_dim=32,
        image_decoder_depth=1,
        image_decoder_heads=2,
        teacher_dim=48,
        pixel_decoder_dim=32,
        pixel_decoder_depth=1,
        pixel_decoder_heads=2,
    )
    report = load_backbone({"model": s.state_dict()}, s_big)
    assert report.ok and torch.equal(s_big.pos_embed, sincos_3d(64, (4, 6, 6)))
    assert report.pos_embed == "fixed sincos3d table for grid (4, 6, 6) (checkpoint: sincos3d)"
    # A 16-frame 224-px SurgVISTA table is recognised whatever the target grid.
    base_like = {**s.state_dict(), "pos_embed": sincos_3d(64, (8, 14, 14))}
    report = load_backbone({"model": base_like}, classifier("sincos3d"))
    assert "checkpoint pos_embed is the sincos3d table of grid (8, 14, 14)" in report.notes
    with pytest.raises(CheckpointError, match="sincos3d table but the model uses sinusoid1d"):
        load_backbone({"model": base_like}, classifier("sinusoid1d"))
    hf_big = classifier("sinusoid1d", num_frames=8, img_size=48)
    load_backbone(all_layouts[6][1], hf_big)
    torch.testing.assert_close(hf_big.pos_embed, sinusoid_table(4 * 36, 64), rtol=0, atol=0)


def test_interpolate_learned_table_axes():
    g = (2, 4, 4)
    table = torch.randn(1, 32, 16)
    assert torch.equal(interpolate_pos_embed(table, g, g), table)
    # Constant over time stays constant over time; a frame that is constant in space stays constant.
    frame = torch.randn(1, 1, 4, 4, 16).expand(1, 2, 4, 4, 16).reshape(1, 32, 16)
    out = interpolate_pos_embed(frame, g, (8, 6, 6)).reshape(8, 6, 6, 16)
    torch.testing.assert_close(out, out[:1].expand(8, -1, -1, -1))
    const = torch.arange(2.0)[:, None, None, None].expand(2, 4, 4, 16).reshape(1, 32, 16)
    out = interpolate_pos_embed(const, g, (4, 6, 6)).reshape(4, 36, 16)
    torch.testing.assert_close(out, out[:, :1].expand(-1, 36, -1))
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_learned_table_is_interpolated_on_load_16_to_32_frames_224_to_288():
    small = VideoClassifier(
        3, "tiny", img_size=224, num_frames=16, embed_dim=32, depth=1, num_heads=2, pos_embed="learned"
    )
    big = VideoClassifier(
        3, "tiny", img_size=288, num_frames=32, embed_dim=32, depth=1, num_heads=2, pos_embed="learned"
    )
    report = load_backbone({"model": small.state_dict()}, big)
    assert report.pos_embed == "learned table interpolated from grid (8, 14, 14) to (16, 18, 18)"
    torch.testing.assert_close(big.pos_embed, interpolate_pos_embed(small.pos_embed, (8, 14, 14), (16, 18, 18)))
    # A fixed-table checkpoint initialises a learned model with that table at the new geometry.
    fresh = classifier("learned", num_frames=8, img_size=48)
    load_backbone(hf_encoder(student("sinusoid1d", image_decoder=False)), fresh)
    torch.testing.assert_close(fresh.pos_embed.detach(), sinusoid_table(144, 64), rtol=0, atol=0)


# --------------------------------------------------------------------------------------- teacher parity


def _endossl_reference(state: dict[str, torch.Tensor], images: torch.Tensor, depth: int, heads: int) -> torch.Tensor:
    """The EndoSSL ViT written out: patches + pos_embed, prepend cls, pre-norm blocks (eps 1e-5, separate q/k/v,
    exact GELU), last block's patch tokens without the final norm."""
    x = torch.nn.functional.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2) + state["pos_embed"]
    x = torch.cat([state["cls_token"].expand(x.shape[0], -1, -1), x], 1)
    dim = x.shape[-1]
    for i in range(depth):
        p = f"blocks.{i}."

        def lin(v, name, p=p):
            return torch.nn.functional.linear(v, state[p + name + ".weight"], state[p + name + ".bias"])

        h = torch.nn.functional.layer_norm(x, (dim,), state[p + "norm1.weight"], state[p + "norm1.bias"], 1e-5)
        q, k, v = (lin(h, f"attn.{n}").unflatten(-1, (heads, -1)).transpose(1, 2) for n in "qkv")
        a = torch.softmax(q @ k.transpose(-1, -2) * (dim // heads) ** -0.5, -1) @ v
        x = x + lin(a.transpose(1, 2).flatten(2), "attn.proj")
        h = torch.nn.functional.layer_norm(x, (dim,), state[p + "norm2.weight"], state[p + "norm2.bias"], 1e-5)
        x = x + lin(torch.nn.functional.gelu(lin(h, "mlp.fc1")), "mlp.fc2")
    return x[:, 1:]


def test_teacher_equals_timm_vit_and_the_spec_reference():
    teacher = ImageTeacher("tiny", img_size=32, frame_stride=2)
    state = teacher.endossl_state_dict()
    g = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v.shape, generator=g) * 0.1 + (1.0 if "norm" in k and "weight" in k else 0)
        for k, v in state.items()
    }
    teacher.load_endossl_state_dict(state)
    ref = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        depth=2,
        num_classes=0,
        no_embed_class=True,
        norm_layer=nn.LayerNorm,
    ).eval()
    ref.load_state_dict(endossl_to_timm(state, 2), strict=True)
    video = torch.randn(2, 3, 4, 32, 32, generator=g)
    frames = video[:, :, ::2].transpose(1, 2).reshape(4, 3, 32, 32)
    with torch.no_grad():
        ours = teacher(video)
        timm_tokens = ref.blocks(ref.norm_pre(ref._pos_embed(ref.patch_embed(frames))))[:, 1:]
        spec = _endossl_reference(state, frames, depth=2, heads=3)
    torch.testing.assert_close(ours, timm_tokens.reshape(2, -1, 192), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, spec.reshape(2, -1, 192), rtol=0, atol=1e-5)


def test_large_teacher_layout_matches_timm_vit_large_on_meta():
    with torch.device("meta"):
        teacher = ImageTeacher("large")
        ref = timm.create_model(
            "vit_large_patch16_224", pretrained=False, num_classes=0, no_embed_class=True, norm_layer=nn.LayerNorm
        )
    ours = {k: tuple(v.shape) for k, v in teacher.vit.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours == theirs
    assert len(teacher.endossl_state_dict()) == 390
