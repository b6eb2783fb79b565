"""Zoo families read their RELEASED checkpoint layouts: per family, a tiny random model is written in exactly the
layout of the released file (the source of each layout is cited at its fixture), loads exactly, and the zoo's
``features`` equal the underlying library model's output on the same input. A wrong key is one error line naming
the file and the key. No download: the real files were not available (docs/benchmark.md, "fixture only")."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_parity_hf import hf_config, randomize
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from surgvista.checkpoints.errors import CheckpointError
from surgvista.models.teacher import TeacherCheckpointError
from surgvista.models.zoo import (
    EndoSSLBackbone,
    HFFrameBackbone,
    StudentBackbone,
    TimmFrameBackbone,
    TorchvisionFrameBackbone,
    ZooBackbone,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "model" / "backbone"


def clips(batch: int = 2, frames: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def own_frames(backbone: ZooBackbone, video: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised clips → frames ``(B·T, 3, H, W)`` in the backbone's own normalisation, computed here."""
    raw = video * torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1, 1) + torch.tensor(IMAGENET_DEFAULT_MEAN).view(
        1, 3, 1, 1, 1
    )
    own = (raw - torch.tensor(backbone.mean).view(1, 3, 1, 1, 1)) / torch.tensor(backbone.std).view(1, 3, 1, 1, 1)
    return own.transpose(1, 2).flatten(0, 1)


def per_frame(tokens: torch.Tensor, pooled: torch.Tensor, b: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference per-frame outputs → the zoo's contract (tokens concatenated over time, pooled averaged)."""
    if tokens.ndim == 4:
        tokens = tokens.flatten(2).transpose(1, 2)
    return tokens.reshape(b, -1, tokens.shape[-1]), pooled.reshape(b, t, -1).mean(1)


def assert_features(backbone: ZooBackbone, video: torch.Tensor, tokens: torch.Tensor, pooled: torch.Tensor) -> None:
    with torch.no_grad():
        t, p = backbone.eval().features(video)
    assert t.shape == tokens.shape and p.shape == (video.shape[0], backbone.embed_dim)
    torch.testing.assert_close(t, tokens, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p, pooled, rtol=1e-4, atol=1e-5)


def assert_one_line_error(exc: pytest.ExceptionInfo, path: Path, key: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and key in msg, msg


def config(name: str) -> dict:
    """A backbone YAML's mapping (the family's documented settings)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    return {k: v for k, v in cfg.items() if k != "_target_"}


# ------------------------------------------------------------------------------------------ VideoMAE V2


def videomae_v2_finetune_state(hf: torch.nn.Module, num_classes: int = 7) -> dict[str, torch.Tensor]:
    """The weights of a ``transformers`` VideoMAEModel under the key names of OpenGVLab/VideoMAEv2
    ``models/modeling_finetune.py`` (commit 29eab1e): ``patch_embed.proj``, ``blocks.i.attn.qkv.weight`` (no bias)
    with ``attn.q_bias``/``attn.v_bias``, ``norm1``/``norm2``, ``mlp.fc1``/``fc2``, ``fc_norm``, ``head``; the 1-D
    sinusoid table is a plain tensor there, never stored."""
    sd = hf.state_dict()
    out = {
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
    }
    for i in range(hf.config.num_hidden_layers):
        pre, att = f"encoder.layer.{i}.", f"encoder.layer.{i}.attention.attention."
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([sd[f"{att}{n}.weight"] for n in ("query", "key", "value")])
        out[f"blocks.{i}.attn.q_bias"] = sd[f"{att}query.bias"]
        out[f"blocks.{i}.attn.v_bias"] = sd[f"{att}value.bias"]
        for ours, theirs in (
            ("norm1", "layernorm_before"),
            ("attn.proj", "attention.output.dense"),
            ("norm2", "layernorm_after"),
            ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense"),
        ):
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{p}"] = sd[f"{pre}{theirs}.{p}"]
    d = hf.config.hidden_size
    g = torch.Generator().manual_seed(3)
    out.update({"fc_norm.weight": torch.ones(d), "fc_norm.bias": torch.zeros(d)})
    out.update({"head.weight": torch.randn(num_classes, d, generator=g), "head.bias": torch.zeros(num_classes)})
    return out


def videomae_v2_pretrain_state(finetune: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VideoMAEv2 ``models/modeling_pretrain.py`` (commit 29eab1e): the encoder under ``encoder.`` with its final
    ``encoder.norm``, plus ``encoder_to_decoder.weight`` (no bias), ``mask_token`` and ``decoder.*`` blocks."""
    d = finetune["fc_norm.weight"].shape[0]
    out = {f"encoder.{k}": v for k, v in finetune.items() if not k.startswith(("fc_norm", "head"))}
    out.update({"encoder.norm.weight": torch.ones(d), "encoder.norm.bias": torch.zeros(d)})
    out.update({"encoder_to_decoder.weight": torch.randn(16, d), "mask_token": torch.zeros(1, 1, 16)})
    out.update({"decoder.blocks.0.norm1.weight": torch.ones(16), "decoder.norm.weight": torch.ones(16)})
    out.update({"decoder.head.weight": torch.randn(2 * 3 * 8 * 8, 16), "decoder.head.bias": torch.zeros(384)})
    return out


@pytest.mark.parametrize(
    ("name", "file", "container"),
    [
        ("videomaev2_base_distilled", "vit_b_k710_dl_from_giant.pth", "module"),
        ("videomaev2_giant", "vit_g_hybrid_pt_1200e.pth", "model"),
    ],
)
def test_videomae_v2_released_layouts_equal_hf_videomae(tmp_path, name, file, container):
    """``distill/vit_b_k710_dl_from_giant.pth`` (``{'module': ...}``, as DeepSpeed fine-tuning saves it; the finetune
    script reads ``model|module``) and ``vit_g_hybrid_pt_1200e.pth`` (``{'model': ...}``, pre-training) → our student
    equals HF VideoMAEModel on the same weights. The giant's MLP ratio 48/11 is exercised (hidden 64 → 279)."""
    from transformers import VideoMAEModel

    ratio = config(name).get("mlp_ratio", 4.0)
    hf = randomize(VideoMAEModel(hf_config(use_mean_pooling=True, intermediate_size=int(64 * ratio))), seed=21)
    finetune = videomae_v2_finetune_state(hf)
    state = finetune if container == "module" else videomae_v2_pretrain_state(finetune)
    torch.save({container: state}, tmp_path / file)
    geometry = config(name) | {"img_size": 32, "num_frames": 4, "patch_size": 8}
    geometry |= {"embed_dim": 64, "depth": 2, "num_heads": 4}
    video = clips(frames=4, seed=22)
    with torch.no_grad():
        reference = hf.eval()(pixel_values=video.transpose(1, 2)).last_hidden_state
    ours = StudentBackbone(**{**geometry, "ckpt": str(tmp_path / file), "attn_backend": "eager"})
    assert_features(ours, video, reference, reference.mean(1))

    prefix = "" if container == "module" else "encoder."
    state[f"{prefix}blocks.1.mlp.fc3.weight"] = state.pop(f"{prefix}blocks.1.mlp.fc1.weight")
    torch.save({container: state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "bad.pth"))) as exc:
        StudentBackbone(**{**geometry, "ckpt": str(tmp_path / "bad.pth")})
    assert "blocks.1.mlp.fc3.weight" in str(exc.value) and "blocks.1.mlp.fc1.weight" in str(exc.value)


# ---------------------------------------------------------------------------------------------- DINOv3


def test_dinov3_folder_per_frame_equals_the_transformers_model(tmp_path):
    """A ``facebook/dinov3-*`` hub folder: ``DINOv3ViTModel.save_pretrained`` (transformers 5.25) + the
    ``preprocessor_config.json`` of the SAT-493M weights (its own mean/std)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    cfg = DINOv3ViTConfig(
        patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    cfg.num_register_tokens, cfg.image_size = 2, 32
    torch.manual_seed(31)
    model = DINOv3ViTModel(cfg).eval()
    model.save_pretrained(tmp_path / "dinov3")
    sat = {"image_mean": [0.430, 0.411, 0.296], "image_std": [0.213, 0.156, 0.143]}
    (tmp_path / "dinov3" / "preprocessor_config.json").write_text(json.dumps(sat))
    ours = HFFrameBackbone(
        **(config("dinov3_vitb16") | {"path": str(tmp_path / "dinov3"), "attn_implementation": "eager"})
    )
    assert ours.mean == tuple(sat["image_mean"]) and ours.embed_dim == 32
    video = clips(seed=32)
    with torch.no_grad():
        out = model(pixel_values=own_frames(ours, video))
    tokens, pooled = per_frame(out.last_hidden_state, out.pooler_output, 2, 2)
    assert tokens.shape == (2, 2 * (1 + 2 + 16), 32)  # class + 2 registers + 4x4 patches, per frame
    assert_features(ours, video, tokens, pooled)

    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "dinov3" / "model.safetensors")
    weights["layer.1.mlp.up_proj.weightX"] = weights.pop("layer.1.mlp.up_proj.weight")
    save_file(weights, tmp_path / "dinov3" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as exc:
        HFFrameBackbone(path=str(tmp_path / "dinov3"))
    assert_one_line_error(exc, tmp_path / "dinov3", "layer.1.mlp.up_proj.weight")


# ---------------------------------------------------------------------------------------------- EndoViT


def mae_pretrain_checkpoint(vit: torch.nn.Module, decoder_dim: int = 16) -> dict:
    """facebookresearch/mae ``main_pretrain.py``/``util/misc.py:save_model`` container as EndoViT released it
    (``endovit.pth`` on HF ``egeozsoy/EndoViT``, read as ``torch.load(...)['model']`` by ``endovit_demo.py`` @
    3f710ca): the ``models_mae.MaskedAutoencoderViT`` state (timm ViT encoder keys + ``mask_token`` and
    ``decoder_*``), plus ``epoch`` and the pickled ``args`` namespace."""
    g = torch.Generator().manual_seed(41)
    state = dict(vit.state_dict())
    d, n = vit.embed_dim, vit.pos_embed.shape[1]
    state.update(
        {
            "mask_token": torch.zeros(1, 1, decoder_dim),
            "decoder_embed.weight": torch.randn(decoder_dim, d, generator=g),
            "decoder_embed.bias": torch.zeros(decoder_dim),
            "decoder_pos_embed": torch.zeros(1, n, decoder_dim),
            "decoder_blocks.0.norm1.weight": torch.ones(decoder_dim),
            "decoder_norm.weight": torch.ones(decoder_dim),
            "decoder_pred.weight": torch.randn(8 * 8 * 3, decoder_dim, generator=g),
        }
    )
    return {"model": state, "epoch": 399, "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75)}


def test_endovit_mae_checkpoint_per_frame_equals_timm(tmp_path):
    import timm

    small = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
    torch.manual_seed(42)
    vit = timm.create_model("vit_base_patch16_224", num_classes=0, **small).eval()
    torch.save(mae_pretrain_checkpoint(vit), tmp_path / "endovit.pth")
    cfg = config("endovit") | {"ckpt": str(tmp_path / "endovit.pth"), "model_kwargs": small}
    ours = TimmFrameBackbone(**cfg)
    assert ours.mean == (0.3464, 0.2280, 0.2228) and ours.std == (0.2520, 0.2128, 0.2093)
    video = clips(seed=43)
    with torch.no_grad():
        feats = vit.forward_features(own_frames(ours, video))
        tokens, pooled = per_frame(feats, vit.forward_head(feats, pre_logits=True), 2, 2)
    assert_features(ours, video, tokens, pooled)

    bad = mae_pretrain_checkpoint(vit)
    del bad["model"]["blocks.1.attn.qkv.bias"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        TimmFrameBackbone(**(cfg | {"ckpt": str(tmp_path / "bad.pth")}))
    assert_one_line_error(exc, tmp_path / "bad.pth", "blocks.1.attn.qkv.bias")


# ----------------------------------------------------------------------------------------------- EndoSSL


def test_endossl_teacher_checkpoint_per_frame_equals_the_teacher(tmp_path):
    """The EndoSSL ViT-L .pth SurgVISTA distils from (layout: /work spec ``keys_teacher_large.txt``, read by
    ``models/teacher.py``: separate ``attn.q/k/v``, ``pos_embed`` over the patches only)."""
    from surgvista.models.teacher import ImageTeacher

    teacher = ImageTeacher("tiny", img_size=32, patch_size=8, frame_stride=1, seed=51)
    torch.save(teacher.endossl_state_dict(), tmp_path / "endossl.pth")
    geometry = {"preset": "tiny", "img_size": 32, "patch_size": 8}
    ours = EndoSSLBackbone(**(config("endossl_vitl") | geometry | {"ckpt": str(tmp_path / "endossl.pth")}))
    video = clips(seed=52)
    with torch.no_grad():  # the teacher's targets: last block, no final norm, class token dropped
        targets = teacher(video).reshape(4, 16, -1)
        norm = teacher.vit.norm
        patches = F.layer_norm(targets, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        t, p = ours.eval().features(video)
    torch.testing.assert_close(t.reshape(4, 17, -1)[:, 1:], patches, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        feats = teacher.vit.forward_features(own_frames(ours, video))
    tokens, pooled = per_frame(feats, feats[:, 0], 2, 2)
    assert_features(ours, video, tokens, pooled)
    assert any(q.requires_grad for q in ours.parameters())  # trainable, unlike the frozen teacher

    bad = teacher.endossl_state_dict()
    del bad["blocks.1.attn.k.bias"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(TeacherCheckpointError, match=re.escape(str(tmp_path / "bad.pth"))) as exc:
        EndoSSLBackbone(**(geometry | {"ckpt": str(tmp_path / "bad.pth")}))
    assert "missing key: blocks.1.attn.k.bias" in str(exc.value)


# -------------------------------------------------------------------------------------------- SurgeNetXL


def sail_metaformer_key(key: str) -> str:
    """A timm MetaFormer key → its name in TimJaspers0801/SurgeNet ``metaformer.py`` (the sail-sg/metaformer
    layout the ``SurgeNet*_checkpoint_epoch0050_teacher.pth`` files are loaded with): ``downsample_layers.i``
    (``conv``, stem ``post_norm``, others ``pre_norm``), ``stages.i.j.*``, output ``norm``."""
    key = re.sub(r"^stem\.conv\.", "downsample_layers.0.conv.", key)
    key = re.sub(r"^stem\.norm\.", "downsample_layers.0.post_norm.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", r"downsample_layers.\1.conv.", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
    return re.sub(r"^head\.norm\.", "norm.", key)


def surgenet_teacher_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """SurgeNet's layout: Linear (2-D) point-wise weights where timm has 1x1 convs, and its ``MlpHead``
    (``head.fc1``/``head.norm``/``head.fc2``), which the SurgeNet loader drops."""
    out = {}
    for key, value in model.state_dict().items():
        out[sail_metaformer_key(key)] = value.flatten(1) if value.ndim == 4 and value.shape[2:] == (1, 1) else value
    out.update({"head.fc1.weight": torch.randn(2048, 512), "head.fc1.bias": torch.zeros(2048)})
    out.update({"head.norm.weight": torch.ones(2048), "head.fc2.weight": torch.randn(12, 2048)})
    return out


def test_surgenetxl_caformer_teacher_file_equals_timm(tmp_path):
    import timm

    cfg = config("surgenetxl_caformer") | {"seed": 61}
    torch.manual_seed(62)
    relu = {"mlp_act": torch.nn.ReLU, "act1_layer": torch.nn.ReLU}  # SurgeNet's caformer: ReLU, not StarReLU
    ref = timm.create_model("caformer_s18", num_classes=0, **relu).eval()
    torch.save(surgenet_teacher_state(ref), tmp_path / "SurgeNetXL_checkpoint_epoch0050_teacher.pth")
    ours = TimmFrameBackbone(**(cfg | {"ckpt": str(tmp_path / "SurgeNetXL_checkpoint_epoch0050_teacher.pth")}))
    video = clips(size=64, seed=63)
    with torch.no_grad():
        feats = ref.forward_features(own_frames(ours, video))
        tokens, pooled = per_frame(feats, ref.forward_head(feats, pre_logits=True), 2, 2)
    assert tokens.shape == (2, 2 * 2 * 2, 512)  # a 2x2 stride-32 map per 64-px frame
    assert_features(ours, video, tokens, pooled)

    bad = surgenet_teacher_state(ref)
    bad["stages.2.0.res_scale9.scale"] = bad.pop("stages.2.0.res_scale1.scale")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        TimmFrameBackbone(**(cfg | {"ckpt": str(tmp_path / "bad.pth")}))
    assert_one_line_error(exc, tmp_path / "bad.pth", "res_scale9")


def fb_convnextv2_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm ``convnextv2_*`` weights under the facebookresearch/ConvNeXt-V2 names SurgeNet's ``convnextv2.py``
    (@ e87372f) loads its ``SurgeNet_ConvNextv2_checkpoint_epoch0050_teacher.pth`` ``['model']`` into:
    ``downsample_layers.i.j``, ``stages.i.j.{dwconv,norm,pwconv1,grn,pwconv2}`` (GRN ``gamma``/``beta`` of shape
    ``(1, 1, 1, C)``), final ``norm`` and a ``head`` (dropped by its loader)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"^stem\.", "downsample_layers.0.", key)
        key = re.sub(r"^stages\.(\d)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("head.norm", "norm")
        if ".mlp.grn." in key:
            key = key.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
            value = value.reshape(1, 1, 1, -1)
        out[key] = value
    d = model.num_features
    out.update({"head.weight": torch.randn(12, d), "head.bias": torch.zeros(12)})
    return out


def test_surgenet_convnextv2_teacher_file_equals_timm(tmp_path):
    import timm

    torch.manual_seed(65)
    ref = timm.create_model("convnextv2_atto", num_classes=0).eval()  # the YAML's convnextv2_tiny: same layout
    state = fb_convnextv2_state(ref)
    assert "downsample_layers.0.1.weight" in state and state["stages.0.0.grn.gamma"].shape[:3] == (1, 1, 1)
    torch.save({"model": state, "epoch": 50}, tmp_path / "SurgeNet_ConvNextv2_checkpoint_epoch0050_teacher.pth")
    cfg = config("surgenet_convnextv2") | {"name": "convnextv2_atto"}
    ours = TimmFrameBackbone(**(cfg | {"ckpt": str(tmp_path / "SurgeNet_ConvNextv2_checkpoint_epoch0050_teacher.pth")}))
    video = clips(size=64, seed=66)
    with torch.no_grad():
        feats = ref.forward_features(own_frames(ours, video))
        tokens, pooled = per_frame(feats, ref.forward_head(feats, pre_logits=True), 2, 2)
    assert_features(ours, video, tokens, pooled)

    del state["stages.3.1.pwconv2.bias"]
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        TimmFrameBackbone(**(cfg | {"ckpt": str(tmp_path / "bad.pth")}))
    assert_one_line_error(exc, tmp_path / "bad.pth", "stages.3.blocks.1.mlp.fc2.bias")


# ------------------------------------------------------------------------------------------------ LemonFM


def dino_checkpoint(backbone: torch.nn.Module) -> dict:
    """facebookresearch/dino ``main_dino.py`` ``save_dict`` as LemonFM released it (visurg-ai/LEMON
    ``src/model_loader.py`` @ e0a91f1 reads ``['teacher']`` and keeps the ``backbone.`` keys): ``student``/
    ``teacher`` (``MultiCropWrapper``: ``backbone.*`` + the DINO ``head.*``), ``epoch``, ``args``."""
    backbone_keys = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    head = {"head.mlp.0.weight": torch.randn(32, 8), "head.last_layer.weight_g": torch.ones(64, 1)}
    return {
        "student": {f"module.{k}": v for k, v in {**backbone_keys, **head}.items()},
        "teacher": {**backbone_keys, **head},
        "epoch": 100,
        "args": argparse.Namespace(arch="convnext_large", out_dim=65536),
    }


def test_lemonfm_dino_teacher_per_frame_equals_torchvision(tmp_path):
    import torchvision

    torch.manual_seed(71)
    ref = torchvision.models.convnext_tiny(weights=None)  # the YAML's convnext_large: same layout, 3x wider
    ref.classifier[2] = torch.nn.Identity()  # LemonFM's own build_SurgFM does the same
    ref.eval()
    torch.save(dino_checkpoint(ref), tmp_path / "LemonFM.pth")
    cfg = config("lemonfm_convnext") | {"name": "convnext_tiny", "ckpt": str(tmp_path / "LemonFM.pth")}
    ours = TorchvisionFrameBackbone(**cfg)
    assert ours.embed_dim == 768
    video = clips(seed=72)
    with torch.no_grad():
        frames = own_frames(ours, video)
        tokens, pooled = per_frame(ref.features(frames), ref(frames), 2, 2)  # the model's own forward
    assert_features(ours, video, tokens, pooled)

    bad = dino_checkpoint(ref)
    bad["teacher"]["backbone.features.1.0.layer_scale_"] = bad["teacher"].pop("backbone.features.1.0.layer_scale")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        TorchvisionFrameBackbone(**(cfg | {"ckpt": str(tmp_path / "bad.pth")}))
    assert_one_line_error(exc, tmp_path / "bad.pth", "features.1.0.layer_scale")


# -------------------------------------------------------------------------------------------- SelfSupSurg


def vissl_checkpoint(resnet: torch.nn.Module) -> dict:
    """facebookresearch/vissl ``model_final_checkpoint_phase*.torch`` as SelfSupSurg released it
    (``model_final_checkpoint_{moco_v2,simclr,swav,dino}_surg.torch``, README @ 118b04b): the trunk under
    ``classy_state_dict.base_model.model.trunk`` with ``_feature_blocks.`` (VISSL's ResNeXt trunk) and the SSL
    heads under ``...model.heads``."""
    trunk = {f"_feature_blocks.{k}": v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    heads = {"0.clf.0.weight": torch.randn(128, 512), "0.clf.0.bias": torch.zeros(128)}
    base = {"model": {"trunk": trunk, "heads": heads}, "meta": {}}
    return {"phase_idx": 199, "iteration": 1000, "type": "checkpoint", "classy_state_dict": {"base_model": base}}


def test_selfsupsurg_vissl_trunk_equals_timm_and_torchvision(tmp_path):
    import torchvision

    torch.manual_seed(81)
    ref = torchvision.models.resnet18(weights=None)  # the YAML's resnet50: the same key scheme
    ref.fc = torch.nn.Identity()
    ref.eval()
    torch.save(vissl_checkpoint(ref), tmp_path / "model_final_checkpoint_moco_v2_surg.torch")
    cfg = config("selfsupsurg_resnet50") | {"name": "resnet18"}
    ours = TimmFrameBackbone(**(cfg | {"ckpt": str(tmp_path / "model_final_checkpoint_moco_v2_surg.torch")}))
    video = clips(size=64, seed=82)
    with torch.no_grad():  # timm's resnet and torchvision's agree on keys and maths
        frames = own_frames(ours, video)
        body = torch.nn.Sequential(*list(ref.children())[:-2])
        tokens, pooled = per_frame(body(frames), ref(frames), 2, 2)
    assert_features(ours, video, tokens, pooled)

    bad = vissl_checkpoint(ref)
    del bad["classy_state_dict"]["base_model"]["model"]["trunk"]["_feature_blocks.layer4.1.bn2.running_var"]
    torch.save(bad, tmp_path / "bad.torch")
    with pytest.raises(CheckpointError) as exc:
        TimmFrameBackbone(**(cfg | {"ckpt": str(tmp_path / "bad.torch")}))
    assert_one_line_error(exc, tmp_path / "bad.torch", "layer4.1.bn2.running_var")
    torch.save({"state_dict": {}}, tmp_path / "other.torch")
    with pytest.raises(CheckpointError) as exc:  # a file of another layout: the missing container is named
        TimmFrameBackbone(**(cfg | {"ckpt": str(tmp_path / "other.torch")}))
    assert_one_line_error(exc, tmp_path / "other.torch", "classy_state_dict")


# -------------------------------------------------------------------------------------------------- GSViT


def msra_efficientvit_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm ``efficientvit_m*`` weights under the names of Microsoft's EfficientViT as vendored in
    SamuelSchmidgall/GSViT ``EfficientViT/classification/model/efficientvit.py`` (@ 6cc153b), inside the
    ``load_gsvit.py`` wrapper whose ``evit`` is ``Sequential(patch_embed, blocks1, blocks2, blocks3)`` (``GSViT.pkl``
    is that wrapper's state dict): ``Conv2d_BN`` = ``c``/``bn``, ``patch_embed.{0,2,4,6}``, each later stage's
    ``blocks<k>`` = [subsample dw+FFN, PatchMerging, dw+FFN, blocks...], and a stored ``attention_bias_idxs``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"\.conv\.weight$", ".c.weight", key)
        key = re.sub(r"^patch_embed\.conv(\d)\.", lambda m: f"evit.0.{2 * (int(m[1]) - 1)}.", key)
        key = re.sub(r"^stages\.0\.blocks\.", "evit.1.", key)
        for i, part in enumerate(("res1", "patchmerge", "res2")):
            key = re.sub(rf"^stages\.(\d)\.downsample\.{part}\.", lambda m, i=i: f"evit.{int(m[1]) + 1}.{i}.", key)
        key = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"evit.{int(m[1]) + 1}.{int(m[2]) + 3}.", key)
        out[key] = value
        if key.endswith("attn.attention_biases"):
            n = value.shape[1]
            out[key.replace("attention_biases", "attention_bias_idxs")] = torch.zeros(n, n, dtype=torch.long)
    return out


def test_gsvit_pkl_per_frame_equals_timm_efficientvit(tmp_path):
    import timm

    torch.manual_seed(91)
    ref = timm.create_model("efficientvit_m0", num_classes=0, img_size=64).eval()  # the YAML's m5: same layout
    state = msra_efficientvit_state(ref)
    assert "evit.2.1.conv1.c.weight" in state and "evit.0.6.bn.running_var" in state
    torch.save(state, tmp_path / "GSViT.pkl")
    cfg = config("gsvit") | {"name": "efficientvit_m0", "model_kwargs": {"img_size": 64}}
    ours = TimmFrameBackbone(**(cfg | {"ckpt": str(tmp_path / "GSViT.pkl")}))
    assert ours.bgr and ours.mean == (0.0, 0.0, 0.0)
    video = clips(size=64, seed=92)
    with torch.no_grad():
        frames = own_frames(ours, video)[:, [2, 1, 0]]  # GSViT's process_inputs: RGB -> BGR
        feats = ref.forward_features(frames)
        tokens, pooled = per_frame(feats, ref.forward_head(feats, pre_logits=True), 2, 2)
    assert_features(ours, video, tokens, pooled)

    del state["evit.3.4.ffn1.m.pw2.bn.weight"]
    torch.save(state, tmp_path / "bad.pkl")
    with pytest.raises(CheckpointError) as exc:
        TimmFrameBackbone(**(cfg | {"ckpt": str(tmp_path / "bad.pkl")}))
    assert_one_line_error(exc, tmp_path / "bad.pkl", "ffn1.m.pw2.bn.weight")
