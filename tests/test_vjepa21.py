"""V-JEPA 2.1 torch.hub ``.pt`` files in the zoo and in fine-tuning, from a tiny random model in the released layout.

Layout (facebookresearch/vjepa2 @ 16de6c80c258eab97f0517f69399576f06568cb9 ``src/hub/backbones.py`` and
``app/vjepa_2_1/train.py``; @ be434e4621e78d7cb176ccbea23c136c2141a42f ``app/vjepa_2_1/models/vision_transformer.py``,
@ 16de6c8 ``app/vjepa_2_1/models/utils/modules.py``): ``encoder``/``target_encoder``/``predictor`` (ViT-g/G;
the distilled ViT-B/L are read from ``ema_encoder``), keys prefixed ``module.backbone.``; an encoder has
``patch_embed.proj`` (Conv3d, tubelet 2), ``patch_embed_img.proj`` (tubelet 1), ``video_mod_embed``/``img_mod_embed``
``(1, 1, D)``, ``blocks.{i}`` (fused qkv bias, GELU MLP, RoPE with interleaved frequencies and rows/columns stretched
onto the 256 px grid: 16 tokens for patch 16) and four ``norms_block`` (depth 12: after blocks 2, 5, 8, 11); the
output is the last block through ``norms_block.3``. The reference forward below is written from that description
(RoPE by complex multiplication, attention by an explicit softmax), not through our modules.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from surgvista.checkpoints.errors import CheckpointError, ExportError
from surgvista.checkpoints.load import load_backbone
from surgvista.checkpoints.vjepa import export_vjepa_hf, read_vjepa
from surgvista.layers.rope import apply_rope
from surgvista.models.classifier import VideoClassifier
from surgvista.models.student import SurgVISTAStudent
from surgvista.models.zoo import VJEPABackbone

DIM, DEPTH, HEADS, PATCH, IMG, FRAMES = 32, 12, 2, 16, 64, 4  # depth 12: a depth the release has norms for
GEOMETRY = {"img_size": IMG, "num_frames": FRAMES, "patch_size": PATCH, "embed_dim": DIM, "depth": DEPTH,
            "num_heads": HEADS}  # fmt: skip
PREFIX = "module.backbone."
ATOL = 2e-5


def released_encoder(seed: int) -> dict[str, torch.Tensor]:
    """Random tensors under the released V-JEPA 2.1 encoder keys (``module.backbone.`` prefixed)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.05, base: float = 0.0) -> torch.Tensor:
        return base + scale * torch.randn(*shape, generator=g)

    sd = {
        "patch_embed.proj.weight": rand(DIM, 3, 2, PATCH, PATCH),
        "patch_embed.proj.bias": rand(DIM),
        "patch_embed_img.proj.weight": rand(DIM, 3, 1, PATCH, PATCH),
        "patch_embed_img.proj.bias": rand(DIM),
        "img_mod_embed": rand(1, 1, DIM, scale=0.5),
        "video_mod_embed": rand(1, 1, DIM, scale=0.5),
    }
    for i in range(DEPTH):
        for name, shape in (("attn.qkv", (3 * DIM, DIM)), ("attn.proj", (DIM, DIM)), ("mlp.fc1", (4 * DIM, DIM)),
                            ("mlp.fc2", (DIM, 4 * DIM))):  # fmt: skip
            sd[f"blocks.{i}.{name}.weight"], sd[f"blocks.{i}.{name}.bias"] = rand(*shape, scale=0.2), rand(shape[0])
        for norm in ("norm1", "norm2"):
            sd[f"blocks.{i}.{norm}.weight"], sd[f"blocks.{i}.{norm}.bias"] = rand(DIM, scale=0.1, base=1.0), rand(DIM)
    for k in range(4):
        sd[f"norms_block.{k}.weight"], sd[f"norms_block.{k}.bias"] = rand(DIM, scale=0.1, base=1.0), rand(DIM)
    return {PREFIX + k: v for k, v in sd.items()}


def predictor_part() -> dict[str, torch.Tensor]:
    """A few predictor tensors under their released names (never loaded into an encoder)."""
    return {PREFIX + "predictor_embed.weight": torch.zeros(16, DIM), PREFIX + "mask_tokens.0": torch.zeros(1, 1, 16)}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """``vitg``: encoder/target_encoder/predictor (+ training state) as the ViT-g/G files; ``vitl``: ema_encoder."""
    root = tmp_path_factory.mktemp("vjepa21")
    giant = {"encoder": released_encoder(1), "predictor": predictor_part(), "opt": {}, "scaler": None,
             "target_encoder": released_encoder(2), "epoch": 3, "loss": 0.1, "batch_size": 2, "world_size": 1,
             "lr": 1e-4}  # fmt: skip
    torch.save(giant, root / "vjepa2_1_vitg_384.pt")
    torch.save({"ema_encoder": released_encoder(3), "predictor": predictor_part()}, root / "vjepa2_1_vitl.pt")
    return {"vitg": root / "vjepa2_1_vitg_384.pt", "vitl": root / "vjepa2_1_vitl.pt"}


def turn(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x (B, h, N, d)`` as complex numbers by ``pos · 10000^(-2i/d)``."""
    d = x.shape[-1]
    freqs = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) * 2 / d)
    angle = pos.double()[:, None] * freqs  # (N, d/2)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).flatten(-2).to(x.dtype)


def rope21(x: torch.Tensor, ids: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """V-JEPA 2.1's RoPE of ``x (B, h, N, hd)`` at the flat ids: frame, then stretched row and column."""
    part = 2 * ((x.shape[-1] // 3) // 2)
    frame, rest = ids // (rows * cols), ids % (rows * cols)
    row = (rest // cols).double() * (16 - 1) / max(rows - 1, 1)
    col = (rest % cols).double() * (16 - 1) / max(cols - 1, 1)
    pieces = [turn(x[..., i * part : (i + 1) * part], p) for i, p in enumerate((frame.double(), row, col))]
    return torch.cat([*pieces, x[..., 3 * part :]], dim=-1)


def reference(enc: dict, video: torch.Tensor, image: bool = False, ids: torch.Tensor | None = None) -> torch.Tensor:
    """The released encoder's default (evaluation) output, computed directly from its state dict."""
    sd = {k.removeprefix(PREFIX): v for k, v in enc.items()}
    embed, mod = ("patch_embed_img", "img_mod_embed") if image else ("patch_embed", "video_mod_embed")
    w = sd[f"{embed}.proj.weight"]
    x = F.conv3d(video, w, sd[f"{embed}.proj.bias"], stride=w.shape[2:]).flatten(2).transpose(1, 2) + sd[mod]
    rows = cols = video.shape[-1] // PATCH
    ids = torch.arange(x.shape[1]) if ids is None else ids
    x = x[:, ids]
    hd = DIM // HEADS
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (DIM,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        q, k, v = (
            F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
            .unflatten(-1, (3, HEADS, hd))
            .permute(2, 0, 3, 1, 4)
        )
        q, k = rope21(q, ids, rows, cols), rope21(k, ids, rows, cols)
        att = (q @ k.transpose(-1, -2) / math.sqrt(hd)).softmax(-1) @ v
        x = x + F.linear(att.transpose(1, 2).flatten(2), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (DIM,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"])
        x = x + h + sd[p + "mlp.fc2.bias"]
    return F.layer_norm(x, (DIM,), sd["norms_block.3.weight"], sd["norms_block.3.bias"], 1e-6)


def clip(frames: int = FRAMES, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, frames, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def test_zoo_reads_the_released_files_and_equals_the_direct_computation(files):
    obj = torch.load(files["vitg"], weights_only=False)
    video = clip()
    with torch.no_grad():
        for part, key in (("target", "target_encoder"), ("student", "encoder")):
            zoo = VJEPABackbone(str(files["vitg"]), part=part, rope_variant="vjepa21", **GEOMETRY).eval()
            tokens, pooled = zoo.features(video)
            torch.testing.assert_close(tokens, reference(obj[key], video), rtol=0, atol=ATOL)
            torch.testing.assert_close(pooled, tokens.mean(1), rtol=0, atol=0)
        zoo = VJEPABackbone(str(files["vitl"]), rope_variant="vjepa21", **GEOMETRY).eval()
        ema = torch.load(files["vitl"], weights_only=False)["ema_encoder"]
        torch.testing.assert_close(zoo.features(video)[0], reference(ema, video), rtol=0, atol=ATOL)


def test_single_frames_take_the_image_embedding_and_kept_tokens_their_positions(files):
    enc = torch.load(files["vitg"], weights_only=False)["target_encoder"]
    frame = clip(frames=1, seed=1)
    geometry = {**GEOMETRY, "num_frames": 1, "tubelet_size": 1}
    with torch.no_grad():
        zoo = VJEPABackbone(str(files["vitg"]), rope_variant="vjepa21", **geometry).eval()
        torch.testing.assert_close(zoo.features(frame)[0], reference(enc, frame, image=True), rtol=0, atol=ATOL)
        student = SurgVISTAStudent("tiny", **GEOMETRY, pos_embed="rope", qkv_bias="fused", image_decoder=False,
                                   pixel_decoder=False, drop_path_rate=0.0, rope_variant="vjepa21").eval()  # fmt: skip
        report = load_backbone(files["vitg"], student)
        keep = torch.tensor([0, 3, 5, 6, 17, 22, 30, 31])
        got = student.encode(clip(seed=2), keep.expand(2, -1))
        torch.testing.assert_close(got, reference(enc, clip(seed=2), ids=keep), rtol=0, atol=ATOL)
    notes = " ".join(report.notes)
    assert report.ok and "'target_encoder' loaded" in notes and "norms_block.2" in notes and "patch_embed_img" in notes


def test_fine_tuning_loads_the_encoder_strictly(files):
    enc = torch.load(files["vitg"], weights_only=False)["target_encoder"]
    net = VideoClassifier(5, "tiny", **GEOMETRY, pos_embed="rope", qkv_bias="fused", drop_path_rate=0.0,
                          rope_variant="vjepa21").eval()  # fmt: skip
    assert load_backbone(files["vitg"], net).ok
    video = clip(seed=3)
    with torch.no_grad():
        tokens = net.forward_features(video)  # the classifier pools before its own fc_norm: compare pre-norm tokens
        sd = {k.removeprefix(PREFIX): v for k, v in enc.items()}
        normed = F.layer_norm(tokens, (DIM,), sd["norms_block.3.weight"], sd["norms_block.3.bias"], 1e-6)
        torch.testing.assert_close(normed, reference(enc, video), rtol=0, atol=ATOL)


def test_wrong_or_missing_keys_and_the_wrong_rope_are_one_line_errors(files, tmp_path):
    obj = torch.load(files["vitg"], weights_only=False)
    cases = {
        "extra": ({PREFIX + "blocks.0.mlp.fc3.weight": torch.zeros(DIM)}, (), r"\[target_encoder\]: key\(s\) with "
                  r"no place in the V-JEPA 2\.1 encoder layout: \['blocks\.0\.mlp\.fc3\.weight'\]"),
        "nonorm": ({}, [f"{PREFIX}norms_block.{k}.{p}" for k in range(4) for p in ("weight", "bias")],
                   r"V-JEPA 2\.1 encoder without norms_block\.weight"),
    }  # fmt: skip
    for name, (add, drop, message) in cases.items():
        broken = {**obj, "target_encoder": {k: v for k, v in {**obj["target_encoder"], **add}.items() if k not in drop}}
        torch.save(broken, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=rf"{name}\.pt.*{message}") as err:
            VJEPABackbone(str(tmp_path / f"{name}.pt"), rope_variant="vjepa21", **GEOMETRY)
        assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"vitg_384\.pt: a V-JEPA 2\.1 encoder needs rope_variant='vjepa21'"):
        VJEPABackbone(str(files["vitg"]), **GEOMETRY)
    with pytest.raises(CheckpointError, match=r"vitl\.pt: no encoder state dict .* \(it has \['ema_encoder'\]\)"):
        VJEPABackbone(str(files["vitl"]), part="student", rope_variant="vjepa21", **GEOMETRY)
    with pytest.raises(CheckpointError, match=r"vitg_384\.pt: a V-JEPA 2\.1 file; read_vjepa"):
        read_vjepa(files["vitg"])
    student = SurgVISTAStudent("tiny", **GEOMETRY, pos_embed="rope", qkv_bias="fused", image_decoder=False,
                               pixel_decoder=False, rope_variant="vjepa21")  # fmt: skip
    with pytest.raises(ExportError, match="VJEPA2Model computes V-JEPA 2's RoPE, not rope_variant='vjepa21'"):
        export_vjepa_hf(student, None, tmp_path / "hf")


def test_rope_variant_differs_from_vjepa2_and_matches_the_reference():
    x = torch.randn(2, HEADS, 32, 16, generator=torch.Generator().manual_seed(4))
    ids = torch.arange(32)
    grid = (2, 4, 4)
    ours = apply_rope(x, ids, grid, "vjepa21", ref_side=16)
    torch.testing.assert_close(ours, rope21(x, ids, 4, 4), rtol=0, atol=1e-5)
    assert not torch.allclose(ours, apply_rope(x, ids, grid), atol=1e-3)
    with pytest.raises(ValueError, match="unknown rope_variant 'v3'"):
        apply_rope(x, ids, grid, "v3")


def test_backbone_configs_name_the_released_sizes():
    conf = Path(__file__).resolve().parents[1] / "conf/model/backbone"
    sizes = {"vjepa21_base_pt": (768, 12, 12), "vjepa21_pt": (1024, 24, 16), "vjepa21_giant_pt": (1408, 40, 22),
             "vjepa21_gigantic_pt": (1664, 48, 26)}  # fmt: skip
    for name, (dim, depth, heads) in sizes.items():
        cfg = OmegaConf.load(conf / f"{name}.yaml")
        parent = OmegaConf.load(conf / "vjepa21_pt.yaml")
        merged = OmegaConf.merge(OmegaConf.load(conf / "vjepa2_pt.yaml"), parent, cfg)
        assert (merged.embed_dim, merged.depth, merged.num_heads) == (dim, depth, heads)
        assert merged.rope_variant == "vjepa21" and merged.img_size == 384 and dim % heads == 0


def test_model_finetune_vjepa_reads_a_21_file(files, tmp_path):
    """``model=finetune_vjepa model.ckpt=<2.1 .pt> model.net.rope_variant=vjepa21``: the module loads it strictly."""
    from helpers import compose
    from hydra.utils import instantiate

    size = [f"+model.net.{k}={v}" for k, v in (("embed_dim", DIM), ("depth", DEPTH), ("num_heads", HEADS))]
    cfg = compose("demo_phase", "model=finetune_vjepa", f"model.ckpt={files['vitl']}", "model.net.rope_variant=vjepa21",
                  "model.net.preset=tiny", *size, out=tmp_path)  # fmt: skip
    module = instantiate(cfg.model)
    assert module.load_backbone(str(files["vitl"])).ok
    ema = {k.removeprefix(PREFIX): v for k, v in torch.load(files["vitl"], weights_only=False)["ema_encoder"].items()}
    net = module.net.state_dict()
    assert torch.equal(net["blocks.11.mlp.fc2.weight"], ema["blocks.11.mlp.fc2.weight"])
    folded = ema["patch_embed.proj.bias"] + ema["video_mod_embed"].flatten()
    torch.testing.assert_close(net["patch_embed.proj.bias"], folded, rtol=0, atol=0)
