"""V-JEPA weights downstream: fine-tuning a RoPE ``VideoClassifier`` from a ``model=vjepa`` run (EMA target encoder
by default), an official V-JEPA 2 ``.pt`` and an HF ``VJEPA2Model`` folder; the V-JEPA 2 zoo family; and
``surgvista-export format=hf`` of a run, read back by ``transformers.VJEPA2Model`` with equal outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import compose, exit_status, run_script, small_demo_data
from hydra.utils import instantiate
from omegaconf import OmegaConf

from surgvista.checkpoints.errors import CheckpointError
from surgvista.checkpoints.load import load_backbone
from surgvista.layers.masking import take
from surgvista.models.classifier import VideoClassifier
from surgvista.models.student import SurgVISTAStudent
from surgvista.models.zoo import VJEPABackbone

transformers = pytest.importorskip("transformers")  # dev dependency: always installed by `make test`
from transformers import VJEPA2Config, VJEPA2Model  # noqa: E402

KW = {"img_size": 16, "num_frames": 4, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 4}
ATOL = 1e-5


def rope_encoder(seed: int) -> SurgVISTAStudent:
    """A random encoder-only RoPE student (the V-JEPA 2 encoder) of the tiny geometry ``KW``."""
    torch.manual_seed(seed)
    model = SurgVISTAStudent("tiny", **KW, pos_embed="rope", qkv_bias="fused", image_decoder=False,
                             pixel_decoder=False, drop_path_rate=0.0, init="trunc_normal")  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def official(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict as V-JEPA 2 saves it: facebookresearch/vjepa2 ``app/vjepa/train.py`` ``save_checkpoint`` wraps
    the encoders in DDP (``module.``) around the multi-mask wrapper (``backbone.``); the names below are those of
    ``src/models/vision_transformer.py`` (``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,
    mlp.fc2}``, ``norm``)."""
    return {f"module.backbone.{k}": v.clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def pt_file(tmp_path_factory) -> tuple[Path, SurgVISTAStudent, SurgVISTAStudent]:
    """An official-layout V-JEPA 2 file (``save_checkpoint``'s keys) with different encoder and target encoder."""
    student, target = rope_encoder(1), rope_encoder(2)
    path = tmp_path_factory.mktemp("vjepa_pt") / "vitl.pt"
    torch.save({"encoder": official(student), "predictor": {}, "target_encoder": official(target),
                "opt": {"state": {}, "param_groups": []}, "scaler": None, "epoch": 3, "loss": 0.2,
                "batch_size": 2, "world_size": 1, "lr": 1e-4}, path)  # fmt: skip
    return path, student, target


def rope_classifier() -> VideoClassifier:
    return VideoClassifier(5, "tiny", **KW, pos_embed="rope", qkv_bias="fused", drop_path_rate=0.0).eval()


def normed_tokens(classifier: VideoClassifier, encoder: SurgVISTAStudent, video: torch.Tensor) -> torch.Tensor:
    """The classifier's tokens through ``encoder``'s final norm (the classifier pools without it)."""
    norm = encoder.norm
    return F.layer_norm(classifier.forward_features(video), norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def clip(seed: int = 0, size: int = 16, frames: int = 4) -> torch.Tensor:
    return torch.randn(2, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ fine-tuning: the classifier


def test_rope_classifier_from_an_official_pt_takes_the_target_encoder_by_default(pt_file):
    path, student, target = pt_file
    model = rope_classifier()
    assert model.pos_embed is None and "pos_embed" not in model.state_dict()
    report = load_backbone(path, model)
    assert report.ok and report.pos_embed == "3-D RoPE (no encoder table)"
    video = clip(3)
    with torch.no_grad():
        torch.testing.assert_close(normed_tokens(model, target, video), target.encode(video), rtol=0, atol=ATOL)
        load_backbone(path, model, part="student")
        torch.testing.assert_close(normed_tokens(model, student, video), student.encode(video), rtol=0, atol=ATOL)


def test_a_table_classifier_is_told_which_config_to_set(pt_file, tmp_path):
    path, _, _ = pt_file
    table = VideoClassifier(5, "tiny", **KW)
    with pytest.raises(CheckpointError, match=r"vitl\.pt: a V-JEPA 2 \(RoPE\) encoder .* model=finetune_vjepa .*"
                       r"model\.net\.pos_embed=rope model\.net\.qkv_bias=fused") as err:  # fmt: skip
        load_backbone(path, table)
    assert "\n" not in str(err.value)
    divided = VideoClassifier(5, "tiny", **KW, pos_embed="rope")
    with pytest.raises(CheckpointError, match="qkv_bias is not 'fused'"):
        load_backbone(path, divided)
    # A V-JEPA 2 encoder mixed with V-JEPA 2.1 modules (per-depth norms; tests/test_vjepa21.py reads real 2.1 files)
    newer = torch.load(path, weights_only=False)
    newer["target_encoder"]["module.backbone.norms_block.0.weight"] = torch.ones(48)
    torch.save(newer, tmp_path / "v21.pt")
    with pytest.raises(CheckpointError, match=r"v21\.pt \[target_encoder\]: key\(s\) with no place in the V-JEPA 2\.1 "
                       r"encoder layout: \['norm\.weight', 'norm\.bias'\]") as err:  # fmt: skip
        load_backbone(tmp_path / "v21.pt", rope_classifier())
    assert "\n" not in str(err.value)
    torch.save({"ema_encoder": newer["target_encoder"], "predictor": {}}, tmp_path / "v21_base.pt")
    with pytest.raises(CheckpointError, match=r"v21_base\.pt \[ema_encoder\]: key\(s\) with no place"):
        load_backbone(tmp_path / "v21_base.pt", rope_classifier())


def tiny_hf(seed: int) -> VJEPA2Model:
    torch.manual_seed(seed)
    config = VJEPA2Config(patch_size=4, crop_size=16, frames_per_clip=4, tubelet_size=2, hidden_size=48,
                          num_attention_heads=4, num_hidden_layers=2, pred_hidden_size=32, pred_num_attention_heads=4,
                          pred_num_hidden_layers=2, attn_implementation="eager")  # fmt: skip
    model = VJEPA2Model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_rope_classifier_and_zoo_from_an_hf_folder_equal_vjepa2model(tmp_path):
    hf = tiny_hf(4)
    hf.save_pretrained(tmp_path / "hf")
    model = rope_classifier()
    report = load_backbone(tmp_path / "hf", model)
    assert report.ok and any("predictor tensors not loaded" in n for n in report.notes)
    video = clip(5)
    with torch.no_grad():
        ref = hf(video.transpose(1, 2), skip_predictor=True).last_hidden_state
        ln = hf.encoder.layernorm
        ours = F.layer_norm(model.forward_features(video), ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        torch.testing.assert_close(ours, ref, rtol=0, atol=ATOL)
        zoo = VJEPABackbone(str(tmp_path / "hf"), **KW).eval()
        tokens, pooled = zoo.features(video)
        torch.testing.assert_close(tokens, ref, rtol=0, atol=ATOL)
        torch.testing.assert_close(pooled, ref.mean(1), rtol=0, atol=ATOL)


def test_zoo_vjepa2_family_reads_the_official_pt(pt_file):
    path, student, target = pt_file
    video = clip(6)
    with torch.no_grad():
        for part, encoder in (("target", target), ("student", student)):
            zoo = VJEPABackbone(str(path), part=part, **KW).eval()
            tokens, pooled = zoo.features(video)  # ImageNet-normalised clips: V-JEPA 2's own normalisation
            torch.testing.assert_close(tokens, encoder.encode(video), rtol=0, atol=0)
            torch.testing.assert_close(pooled, tokens.mean(1), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="checkpoint architecture does not match"):
        VJEPABackbone(str(path), **{**KW, "depth": 3})
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/model/backbone/vjepa2_pt.yaml")
    assert cfg._target_ == "surgvista.models.zoo.VJEPABackbone" and cfg.part == "target"


# ------------------------------------------------------------------------------ a model=vjepa run, downstream


@pytest.fixture(scope="module")
def vjepa_run(tmp_path_factory, demo_root) -> Path:
    """A tiny ``model=vjepa_tiny`` pre-training run (3 steps, EMA momentum 0.5 so that target and student differ)."""
    out = tmp_path_factory.mktemp("vjepa_run")
    run_script(
        "train.py", "experiment=demo", "model=vjepa_tiny", "trainer=cpu", "model.latent.momentum=0.5",
        *small_demo_data(demo_root), "data.batch_size=2", "data.num_workers=0", "trainer.max_epochs=1",
        "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "callbacks.probe_monitor=null",
        "callbacks.rich_progress_bar=null", "logger=csv", "print_config=false", f"hydra.run.dir={out}",
    )  # fmt: skip
    return out


def run_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_finetuning_from_a_vjepa_run_loads_its_target_encoder(vjepa_run, demo_root, tmp_path):
    ckpt = vjepa_run / "checkpoints" / "last.ckpt"
    state = run_state(vjepa_run)
    data = [*small_demo_data(demo_root), "data.batch_size=2"]
    for part, prefix in (("null", "latent.target."), ("student", "student.")):
        cfg = compose("demo_phase", "model=finetune_vjepa_tiny", f"model.ckpt={ckpt}", f"model.ckpt_part={part}",
                      *data, out=tmp_path)  # fmt: skip
        module = instantiate(cfg.model)
        report = module.load_backbone(str(ckpt))
        assert report.ok
        encoder = {k: v for k, v in module.net.state_dict().items() if not k.startswith(("fc_norm.", "head."))}
        assert len(encoder) == len([k for k in state if k.startswith(prefix)]) - 2  # all but the final norm
        for key, value in encoder.items():
            assert torch.equal(value, state[prefix + key]), (part, key)
    moved = [k for k in state if k.startswith("student.blocks") and
             not torch.equal(state[k], state["latent.target." + k[8:]])]  # fmt: skip
    assert moved  # the EMA target is not the student: the choice matters
    plain = instantiate(compose("demo_phase", f"model.ckpt={ckpt}", *data, out=tmp_path).model)
    with pytest.raises(CheckpointError, match="model=finetune_vjepa"):
        plain.load_backbone(str(ckpt))


def test_demo_phase_fine_tunes_from_a_vjepa_run(vjepa_run, demo_root, tmp_path):
    ckpt = vjepa_run / "checkpoints" / "last.ckpt"
    proc = run_script(
        "train.py", "experiment=demo_phase", "model=finetune_vjepa_tiny", f"model.ckpt={ckpt}",
        *small_demo_data(demo_root), "data.batch_size=2", "data.num_workers=0", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false",
        "callbacks.rich_progress_bar=null", "logger=csv", "print_config=false", f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file(), proc.stdout[-2000:]
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert "net.blocks.0.attn.qkv.bias" in state and "net.pos_embed" not in state


# ------------------------------------------------------------------------------------------ export to HF


def run_modules(run: Path, prefix: str):
    """Our encoder (from ``prefix``) and predictor of ``run``, built from its ``config.yaml``."""
    cfg = OmegaConf.load(run / "config.yaml")
    state = run_state(run)
    encoder = instantiate(cfg.model.student).eval()
    encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    predictor = instantiate(cfg.model.latent.predictor)(embed_dim=encoder.embed_dim, token_grid=encoder.token_grid)
    predictor.load_state_dict({k[17:]: v for k, v in state.items() if k.startswith("latent.predictor.")})
    return encoder, predictor.eval()


@pytest.mark.parametrize(("part", "prefix"), [(None, "latent.target."), ("student", "student.")])
def test_export_of_a_vjepa_run_loads_in_vjepa2model_with_equal_outputs(vjepa_run, tmp_path, part, prefix):
    from surgvista.cli.export import main

    ckpt, out = vjepa_run / "checkpoints" / "last.ckpt", tmp_path / "hf"
    args = [f"ckpt={ckpt}", "format=hf", f"out={out}"] + ([f"part={part}"] if part else [])
    assert exit_status(main, args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # atomic: no temporary folder left
    hf = VJEPA2Model.from_pretrained(out, attn_implementation="eager").eval()
    encoder, predictor = run_modules(vjepa_run, prefix)
    n = encoder.token_grid[0] * encoder.token_grid[1] * encoder.token_grid[2]
    video = clip(8, size=encoder.img_size, frames=encoder.num_frames)
    g = torch.Generator().manual_seed(9)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(2)])
    ctx, tgt = order[:, : n // 2].sort(1).values, order[:, n // 2 :].sort(1).values
    with torch.no_grad():
        ref = hf(video.transpose(1, 2), context_mask=[ctx], target_mask=[tgt])
        torch.testing.assert_close(ref.last_hidden_state, encoder.encode(video), rtol=0, atol=ATOL)
        pred = predictor(take(encoder.encode(video), ctx), ctx, tgt, mask_index=1)  # HF predicts with mask token 1
        torch.testing.assert_close(ref.predictor_output.last_hidden_state, pred, rtol=0, atol=ATOL)
    assert exit_status(main, args) == 1  # an existing folder is refused


def test_export_refuses_what_vjepa2model_cannot_hold(vjepa_run, tmp_path, capsys):
    from surgvista.cli.export import main

    state = run_state(vjepa_run)
    state["latent.target.pos_embed"] = torch.zeros(1, 8, 192)  # a table encoder (e.g. model=surgvista_jepa)
    torch.save({"state_dict": state, "epoch": 0}, tmp_path / "table.ckpt")
    assert exit_status(main, [f"ckpt={tmp_path / 'table.ckpt'}", "format=hf", f"out={tmp_path / 'x'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "table.ckpt: target_encoder key(s) with no place in the V-JEPA 2 layout" in err[0]
    bad_part = [f"ckpt={vjepa_run / 'checkpoints' / 'last.ckpt'}", "format=hf", f"out={tmp_path / 'y'}", "part=ema"]
    assert exit_status(main, bad_part) == 1 and not (tmp_path / "y").exists()


def test_init_from_our_own_vjepa_run_continues_its_student_target_and_predictor(vjepa_run, demo_root, tmp_path):
    ckpt = vjepa_run / "checkpoints" / "last.ckpt"
    cfg = compose("demo", "model=vjepa_tiny", *small_demo_data(demo_root), f"model.init_from={ckpt}", "seed=5",
                  out=tmp_path)  # fmt: skip
    module = instantiate(cfg.model)
    state = run_state(vjepa_run)
    for prefix, part in (("student.", module.student), ("latent.target.", module.latent.target),
                         ("latent.predictor.", module.latent.predictor)):  # fmt: skip
        for key, value in part.state_dict().items():
            assert torch.equal(value, state[prefix + key]), prefix + key
