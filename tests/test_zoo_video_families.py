"""Video zoo families read their RELEASED checkpoint layouts (Endo-FM, UMT): a tiny random model is written in
exactly the layout of the released file (the source of each layout is cited at its fixture), loads exactly, and
the zoo's ``features`` equal an independent library model (``transformers``) on the same weights and input. A wrong
key is one error line naming the file and the key. No download: the real files were not available
(docs/benchmark.md, "fixture only")."""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from test_parity_hf import hf_config, randomize
from test_zoo_families import assert_features, assert_one_line_error, clips, config, videomae_v2_finetune_state
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from surgvista.checkpoints.errors import CheckpointError
from surgvista.models.zoo import InternVideo2Backbone, StudentBackbone, TimeSformerBackbone, ZooBackbone


def own_clips(backbone: ZooBackbone, video: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised clips → ``(B, T, 3, H, W)`` in the backbone's own normalisation (HF's video input)."""
    col = lambda v: torch.tensor(v).view(1, 3, 1, 1, 1)  # noqa: E731
    raw = video * col(IMAGENET_DEFAULT_STD) + col(IMAGENET_DEFAULT_MEAN)
    return ((raw - col(backbone.mean)) / col(backbone.std)).transpose(1, 2)


# ---------------------------------------------------------------------------------------------- Endo-FM

# Endo-FM's names (med-air/Endo-FM ``models/timesformer.py`` @ 206427e: ``VisionTransformer`` with
# ``Block(attention_type='divided_space_time')``) → ``transformers.TimesformerModel``'s.
ENDOFM_TO_HF = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "time_embed": "embeddings.time_embeddings",
    "patch_embed.proj": "embeddings.patch_embeddings.projection",
    "norm": "layernorm",
}
ENDOFM_BLOCK_TO_HF = {
    "norm1": "layernorm_before",
    "attn.qkv": "attention.attention.qkv",
    "attn.proj": "attention.output.dense",
    "temporal_norm1": "temporal_layernorm",
    "temporal_attn.qkv": "temporal_attention.attention.qkv",
    "temporal_attn.proj": "temporal_attention.output.dense",
    "temporal_fc": "temporal_dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


def endofm_state(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A ``TimesformerModel``'s weights under Endo-FM's names (every HF tensor used exactly once)."""
    sd = hf.state_dict()
    out = {}
    for ours, theirs in ENDOFM_TO_HF.items():
        for key in [k for k in sd if k == theirs or k.startswith(theirs + ".")]:
            out[ours + key[len(theirs) :]] = sd[key]
    for i in range(hf.config.num_hidden_layers):
        for ours, theirs in ENDOFM_BLOCK_TO_HF.items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{p}"] = sd[f"encoder.layer.{i}.{theirs}.{p}"]
    assert len(out) == len(sd)
    return out


def endofm_checkpoint(hf: torch.nn.Module, head_dim: int = 16) -> dict:
    """The DINO/SVT checkpoint Endo-FM's ``train_ssl.py`` @ 206427e saves (``save_dict``) and ``eval_finetune.py``
    reads as ``ckpt['teacher']`` with ``backbone.`` removed: ``student`` (DDP: ``module.``) and ``teacher``
    (``MultiCropWrapper``: ``backbone.`` + the ``DINOHead`` as ``head.``), ``optimizer``, ``epoch``, ``args``,
    ``dino_loss`` and the unused ``motion_*`` entries (``0``)."""
    net = endofm_state(hf)
    d = hf.config.hidden_size
    head = {
        "head.mlp.0.weight": torch.randn(32, d),
        "head.mlp.0.bias": torch.zeros(32),
        "head.last_layer.weight_g": torch.ones(head_dim, 1),
        "head.last_layer.weight_v": torch.randn(head_dim, 32),
    }
    teacher = {**{f"backbone.{k}": v for k, v in net.items()}, **head}
    return {
        "student": {f"module.{k}": v.clone() for k, v in teacher.items()},
        "teacher": teacher,
        "motion_student": 0,
        "motion_teacher": 0,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0, 1]}]},
        "epoch": 30,
        "args": argparse.Namespace(arch="timesformer", out_dim=head_dim),
        "dino_loss": {"center": torch.zeros(1, head_dim)},
    }


def tiny_timesformer(**kw):
    from transformers import TimesformerConfig, TimesformerModel

    cfg = TimesformerConfig(
        **{
            "image_size": 32,
            "patch_size": 8,
            "num_frames": 4,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "layer_norm_eps": 1e-6,
            "qkv_bias": True,
            **kw,
        }
    )
    return TimesformerModel(cfg)


ENDOFM_GEOMETRY = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 64, "depth": 2, "num_heads": 4}


def test_endofm_checkpoint_equals_transformers_timesformer(tmp_path):
    hf = randomize(tiny_timesformer(), seed=61)
    torch.save(endofm_checkpoint(hf), tmp_path / "endo_fm.pth")
    ours = TimeSformerBackbone(**(config("endofm") | ENDOFM_GEOMETRY | {"ckpt": str(tmp_path / "endo_fm.pth")}))
    assert ours.mean == (0.45, 0.45, 0.45) and ours.std == (0.225, 0.225, 0.225)
    video = clips(frames=4, seed=62)
    with torch.no_grad():
        tokens = hf(pixel_values=own_clips(ours, video)).last_hidden_state
    assert tokens.shape == (2, 1 + 16 * 4, 64)  # class token + 4x4 patches x 4 frames
    assert_features(ours, video, tokens, tokens[:, 0])
    torch.save(endofm_checkpoint(hf)["teacher"], tmp_path / "teacher.pth")  # the teacher alone: read as eval does
    alone = TimeSformerBackbone(**(config("endofm") | ENDOFM_GEOMETRY | {"ckpt": str(tmp_path / "teacher.pth")}))
    assert_features(alone, video, tokens, tokens[:, 0])

    bad = endofm_checkpoint(hf)
    bad["teacher"]["backbone.blocks.1.temporal_fc.weightX"] = bad["teacher"].pop("backbone.blocks.1.temporal_fc.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        TimeSformerBackbone(**(config("endofm") | ENDOFM_GEOMETRY | {"ckpt": str(tmp_path / "bad.pth")}))
    assert_one_line_error(exc, tmp_path / "bad.pth", "blocks.1.temporal_fc.weight")


def test_endofm_resizes_its_tables_as_transformers_does(tmp_path):
    """Other frame counts and sizes: both resize the position and time tables by nearest neighbour (``transformers``
    built for the new geometry, given the trained tables)."""
    hf = randomize(tiny_timesformer(), seed=63)
    torch.save(endofm_checkpoint(hf), tmp_path / "endo_fm.pth")
    ours = TimeSformerBackbone(**(config("endofm") | ENDOFM_GEOMETRY | {"ckpt": str(tmp_path / "endo_fm.pth")}))
    other = tiny_timesformer(num_frames=2, image_size=48)
    other.load_state_dict(
        {k: v for k, v in hf.state_dict().items() if "_embeddings" not in k or "patch" in k}, strict=False
    )
    other.embeddings.position_embeddings = torch.nn.Parameter(hf.embeddings.position_embeddings.detach().clone())
    other.embeddings.time_embeddings = torch.nn.Parameter(hf.embeddings.time_embeddings.detach().clone())
    video = clips(frames=2, size=48, seed=64)
    with torch.no_grad():
        tokens = other.eval()(pixel_values=own_clips(ours, video)).last_hidden_state
    assert tokens.shape == (2, 1 + 36 * 2, 64)
    assert_features(ours, video, tokens, tokens[:, 0])


def test_endofm_fine_tunes_end_to_end():
    from surgvista.models.zoo import ZooClassifier

    backbone = TimeSformerBackbone(**(ENDOFM_GEOMETRY | {"depth": 1, "drop_path_rate": 0.1}))
    net = ZooClassifier(backbone, num_classes=3)
    assert {"backbone.model.pos_embed", "backbone.model.time_embed"} <= net.no_weight_decay()
    net(clips(frames=4)).sum().backward()
    block = backbone.model.blocks[0]
    assert block.temporal_attn.qkv.weight.grad.abs().sum() > 0 and block.attn.qkv.weight.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------------------- UMT


def umt_pretrain_checkpoint(finetune: dict[str, torch.Tensor], clip_layers: int = 2) -> dict:
    """OpenGVLab/unmasked_teacher ``single_modality`` @ 4fb4049: ``models/modeling_pretrain_umt.py``'s
    ``PretrainVisionTransformer`` state as ``utils.save_model`` writes it (``{'model': ..., 'optimizer', 'epoch',
    'scaler', 'args'}``, e.g. ``b16_ptk710_f8_res224.pth``): the encoder under ``encoder.`` (tubelet 1, fused
    ``qkv`` without bias + ``q_bias``/``v_bias``, final ``encoder.norm``; the 1-D sinusoid table is a plain tensor,
    never stored) and ``clip_decoder.<i>`` (``Linear_Decoder``: ``head``, ``norm``), one per CLIP-aligned layer."""
    d = finetune["fc_norm.weight"].shape[0]
    model = {f"encoder.{k}": v for k, v in finetune.items() if not k.startswith(("fc_norm", "head"))}
    model |= {"encoder.norm.weight": torch.ones(d), "encoder.norm.bias": torch.zeros(d)}
    for i in range(clip_layers):
        model |= {f"clip_decoder.{i}.head.weight": torch.randn(12, d), f"clip_decoder.{i}.head.bias": torch.zeros(12)}
        model |= {f"clip_decoder.{i}.norm.weight": torch.ones(12), f"clip_decoder.{i}.norm.bias": torch.zeros(12)}
    args = argparse.Namespace(model="pretrain_umt_base_patch16_224", tubelet_size=1, num_frames=8)
    return {"model": model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 200, "scaler": {}, "args": args}


@pytest.mark.parametrize(
    ("name", "kind"), [("umt_b16", "pretrain"), ("umt_b16", "k710_finetune"), ("umt_l16", "pretrain")]
)
def test_umt_released_layouts_equal_hf_videomae(tmp_path, name, kind):
    """UMT's single-modality ViT is VideoMAE's with tubelet 1 (8 frames → 8 token frames): HF ``VideoMAEModel``
    with ``tubelet_size=1`` on the same weights is the peer. Files: the pre-training ``{'model': encoder. +
    clip_decoder.}`` and the K710 fine-tuned ``{'module': modeling_finetune.VisionTransformer}`` (DeepSpeed, as
    ``run_class_finetuning.py --enable_deepspeed`` saves ``b16_ptk710_ftk710_f8_res224.pth``)."""
    from transformers import VideoMAEModel

    hf = randomize(VideoMAEModel(hf_config(use_mean_pooling=True, tubelet_size=1, num_frames=4)), seed=71)
    finetune = videomae_v2_finetune_state(hf, num_classes=710)
    checkpoint = {"module": finetune} if kind == "k710_finetune" else umt_pretrain_checkpoint(finetune)
    torch.save(checkpoint, tmp_path / "umt.pth")
    cfg = config(name)
    assert cfg["tubelet_size"] == 1 and cfg["num_frames"] == 8 and cfg["pos_embed"] == "sinusoid1d"
    geometry = cfg | {"img_size": 32, "num_frames": 4, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
    ours = StudentBackbone(**(geometry | {"ckpt": str(tmp_path / "umt.pth"), "attn_backend": "eager"}))
    video = clips(frames=4, seed=72)
    with torch.no_grad():
        reference = hf.eval()(pixel_values=video.transpose(1, 2)).last_hidden_state
    assert reference.shape == (2, 4 * 16, 64)  # tubelet 1: every frame is a token frame
    assert_features(ours, video, reference, reference.mean(1))

    state = checkpoint.get("model") or checkpoint["module"]
    prefix = "encoder." if "model" in checkpoint else ""
    state[f"{prefix}blocks.0.attn.q_biasX"] = state.pop(f"{prefix}blocks.0.attn.q_bias")
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "bad.pth"))) as exc:
        StudentBackbone(**(geometry | {"ckpt": str(tmp_path / "bad.pth")}))
    assert "blocks.0.attn.q_biasX" in str(exc.value)


# ------------------------------------------------------------------------------------------ InternVideo2

IV2_TINY = {"img_size": 32, "patch_size": 8, "num_frames": 4, "embed_dim": 64, "depth": 2, "num_heads": 4}


def internvideo2_encoder_state(d: int = 64, depth: int = 2, hidden: int = 256, grid=(4, 4, 4), seed: int = 81):
    """Random weights under the encoder names of OpenGVLab/InternVideo ``InternVideo2/single_modality/models/
    internvideo2_pretrain.py`` and ``internvideo2_distill.py`` @ 3965eef (written from those names and shapes, not
    from our model): ``patch_embed.proj`` (Conv3d, tubelet 1), ``cls_token``, ``pos_embed`` ``(1, 1+T·H·W, D)``,
    ``blocks.<i>.{norm1, norm2}.weight`` (RMSNorm, no bias), ``attn.qkv.weight`` (``qkv_bias=False``),
    ``attn.{q_norm, k_norm}.weight`` (over the width), ``attn.proj``, ``ls1.gamma``/``ls2.gamma``, ``mlp.fc1/fc2``."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: 0.1 * torch.randn(*shape, generator=g)  # noqa: E731
    out = {"patch_embed.proj.weight": rnd(d, 3, 1, 8, 8), "patch_embed.proj.bias": rnd(d)}
    out |= {"cls_token": rnd(1, 1, d), "pos_embed": rnd(1, 1 + grid[0] * grid[1] * grid[2], d)}
    for i in range(depth):
        b = f"blocks.{i}."
        out |= {f"{b}norm1.weight": 1 + rnd(d), f"{b}norm2.weight": 1 + rnd(d), f"{b}attn.qkv.weight": rnd(3 * d, d)}
        out |= {f"{b}attn.q_norm.weight": 1 + rnd(d), f"{b}attn.k_norm.weight": 1 + rnd(d)}
        out |= {f"{b}attn.proj.weight": rnd(d, d), f"{b}attn.proj.bias": rnd(d)}
        out |= {f"{b}ls1.gamma": 1 + rnd(d), f"{b}ls2.gamma": 1 + rnd(d)}
        out |= {f"{b}mlp.fc1.weight": rnd(hidden, d), f"{b}mlp.fc1.bias": rnd(hidden)}
        out |= {f"{b}mlp.fc2.weight": rnd(d, hidden), f"{b}mlp.fc2.bias": rnd(d)}
    return out


def internvideo2_pretrain_extras(d: int = 64, clip_dim: int = 32, teacher_dim: int = 48) -> dict[str, torch.Tensor]:
    """What ``PretrainInternVideo2`` holds besides the encoder: the attention-pooling ``clip_projector``
    (``AttentionPoolingBlock``: LayerNorms ``norm1_q/k/v``, ``cross_attn.{q,k,v}`` + ``q/k/v_bias``, ``proj``),
    ``clip_decoder.<i>`` / ``final_clip_decoder`` (``Linear_Decoder``), ``mae_decoder.<i>`` (``MLP_Decoder``) and
    the ``clip_pos_embed``/``mae_pos_embed`` tables."""
    out = {f"clip_projector.norm1_{n}.{p}": torch.ones(d) for n in "qkv" for p in ("weight", "bias")}
    out |= {f"clip_projector.cross_attn.{n}.weight": torch.randn(d, d) for n in "qkv"}
    out |= {f"clip_projector.cross_attn.{n}_bias": torch.zeros(d) for n in "qkv"}
    out |= {
        "clip_projector.cross_attn.proj.weight": torch.randn(clip_dim, d),
        "clip_projector.cross_attn.proj.bias": torch.zeros(clip_dim),
    }
    out |= {
        "clip_decoder.0.head.weight": torch.randn(teacher_dim, d),
        "clip_decoder.0.norm.weight": torch.ones(teacher_dim),
    }
    out |= {
        "final_clip_decoder.head.weight": torch.randn(clip_dim, clip_dim),
        "final_clip_decoder.norm.bias": torch.zeros(clip_dim),
    }
    out |= {"mae_decoder.0.head.0.weight": torch.randn(d, d), "mae_decoder.0.norm.weight": torch.ones(teacher_dim)}
    return out | {"clip_pos_embed": torch.zeros(1, 65, d), "mae_pos_embed": torch.zeros(1, 64, d)}


def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))


def resized_table(table: torch.Tensor, old: tuple, new: tuple) -> torch.Tensor:
    """The release's ``run_finetuning.py`` resize of the patch rows: time linearly, then space bicubically."""
    d = table.shape[-1]
    x = table.view(1, old[0], -1, d).permute(0, 2, 3, 1).reshape(-1, d, old[0])
    x = torch.nn.functional.interpolate(x, size=new[0], mode="linear").view(1, -1, d, new[0]).permute(0, 3, 1, 2)
    x = x.reshape(new[0], old[1], old[2], d).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, size=new[1:], mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, -1, d)


def internvideo2_reference(sd: dict, video: torch.Tensor, heads: int, table_grid=(4, 4, 4)) -> torch.Tensor:
    """InternVideo2's encoder computed directly from the weights (eager attention, explicit RMSNorm and tanh GELU)."""
    x = torch.nn.functional.conv3d(video, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(1, 8, 8))
    b, d, grid = x.shape[0], x.shape[1], tuple(x.shape[2:])
    x = x.flatten(3).permute(0, 2, 3, 1).reshape(b, -1, d)  # (B, T·HW, D), as its PatchEmbed + view
    patches = sd["pos_embed"][:, 1:]
    if grid != table_grid:
        patches = resized_table(patches, table_grid, grid)
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x], 1) + torch.cat([sd["pos_embed"][:, :1], patches], 1)
    for i in range(max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.")) + 1):
        w = {k[len(f"blocks.{i}.") :]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        q, k, v = (rms(x, w["norm1.weight"]) @ w["attn.qkv.weight"].T).chunk(3, -1)
        q, k = rms(q, w["attn.q_norm.weight"]), rms(k, w["attn.k_norm.weight"])
        split = lambda t: t.reshape(b, t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        att = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        att = att.transpose(1, 2).reshape(b, -1, d) @ w["attn.proj.weight"].T + w["attn.proj.bias"]
        x = x + w["ls1.gamma"] * att
        h = gelu_tanh(rms(x, w["norm2.weight"]) @ w["mlp.fc1.weight"].T + w["mlp.fc1.bias"])
        x = x + w["ls2.gamma"] * (h @ w["mlp.fc2.weight"].T + w["mlp.fc2.bias"])
    return x


@pytest.mark.parametrize(("name", "container"), [("internvideo2_s1_1b", "module"), ("internvideo2_dist_b14", "flat")])
def test_internvideo2_released_layouts_equal_a_direct_computation(tmp_path, name, container):
    """Stage-1 ``pretrain.pth`` (the whole ``PretrainInternVideo2``, here in a DeepSpeed ``{'module': ...}``) and a
    distilled ``pytorch_model.bin`` (a flat ``DistInternVideo2`` state): the container is not documented, so both
    shapes that the release's own loader accepts (``model|module|``) are covered."""
    enc = internvideo2_encoder_state()
    state = enc | internvideo2_pretrain_extras()
    torch.save({"module": state, "epoch": 299} if container == "module" else state, tmp_path / "iv2.pth")
    cfg = config(name) | IV2_TINY | {"mlp_ratio": 4.0, "ckpt": str(tmp_path / "iv2.pth")}
    ours = InternVideo2Backbone(**cfg)
    video = clips(frames=4, seed=82)
    with torch.no_grad():
        reference = internvideo2_reference(enc, video, heads=4)  # ImageNet mean/std: the input as given
    assert reference.shape == (2, 1 + 4 * 16, 64)
    assert_features(ours, video, reference, reference.mean(1))

    other = clips(frames=2, size=48, seed=83)  # another grid: the table is resized as the release's loader does
    with torch.no_grad():
        reference = internvideo2_reference(enc, other, heads=4)
    assert_features(ours, other, reference, reference.mean(1))

    del state["blocks.1.attn.k_norm.weight"]
    torch.save({"module": state} if container == "module" else state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        InternVideo2Backbone(**(cfg | {"ckpt": str(tmp_path / "bad.pth")}))
    assert_one_line_error(exc, tmp_path / "bad.pth", "blocks.1.attn.k_norm.weight")


def test_layout_state_key_alternatives_pick_the_first_present_entry():
    from surgvista.checkpoints.layouts import select_state

    a, b = torch.zeros(1), torch.ones(1)
    assert torch.equal(select_state({"module": {"w": a}, "model": {"w": b}}, "model|module|", "f.pth")["w"], b)
    assert torch.equal(select_state({"module": {"w": a}, "epoch": 3}, "model|module|", "f.pth")["w"], a)
    assert torch.equal(select_state({"w": b, "epoch": 3}, "model|module|", "f.pth")["w"], b)  # the file itself
    with pytest.raises(CheckpointError, match=r"^f\.pth: none of the entries \['model', 'module'\]") as exc:
        select_state({"w": b}, "model|module", "f.pth")
    assert "\n" not in str(exc.value)
