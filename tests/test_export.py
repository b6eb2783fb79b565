"""Export: original layout, safetensors + model card, HF folder; bit-exact round trips."""

from __future__ import annotations

import json

import pytest
import torch
from test_checkpoints import ARCH, GEOM, classifier, randomize, student

from surgvista.checkpoints.errors import CheckpointError, ExportError
from surgvista.checkpoints.export import canonical_state, export
from surgvista.checkpoints.load import load_backbone
from surgvista.checkpoints.read import read_checkpoint
from surgvista.cli.export import main


def lightning_ckpt(tmp_path, model, name: str = "last.ckpt", **extra) -> str:
    """A Lightning-style checkpoint of a student, under ``<run>/checkpoints/`` like train.py writes it."""
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "state_dict": {f"student.{k}": v for k, v in model.state_dict().items()},
        "epoch": 3,
        "global_step": 42,
        "pytorch-lightning_version": "2.5.0",
        "hyper_parameters": {"batch_size": 2, "base_lr": 1.5e-4},
        **extra,
    }
    torch.save(ckpt, ckdir / name)
    return str(ckdir / name)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module, skip: tuple[str, ...] = ()) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        if not key.startswith(skip):
            assert torch.equal(sa[key], sb[key]), key


def test_cli_original_round_trip_is_bit_exact(tmp_path, capsys):
    ours = student()
    ckpt = lightning_ckpt(tmp_path, ours)
    out = tmp_path / "surgvista.pth"
    assert main([f"ckpt={ckpt}", "format=original", f"out={out}"]) == 0  # the CLI entry point, in-process
    assert f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # bad usage: the usage text, exit status 2
        main([f"ckpt={ckpt}", "format=original"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: surgvista-export") and "missing argument(s) ['out']" in err
    obj = torch.load(out, weights_only=True)
    assert list(obj) == ["model"] and list(obj["model"]) == list(ours.state_dict())
    back = student(seed=11)
    report = load_backbone(out, back)
    assert report.layout == "model/surgvista" and report.ok
    assert_same_state(ours, back)


def test_safetensors_export_carries_a_model_card(tmp_path):
    ours = student()
    manifest = tmp_path / "train.jsonl"
    manifest.write_text('{"dataset": "demo", "video_id": "v0"}\n')
    callbacks = {
        "ModelCheckpoint{'monitor': 'val/loss'}": {"best_model_score": torch.tensor(0.25), "monitor": "val/loss"}
    }
    ckpt = lightning_ckpt(
        tmp_path, ours, datamodule_hyper_parameters={"train_manifests": [str(manifest)]}, callbacks=callbacks
    )
    (tmp_path / "config.yaml").write_text("model:\n  student:\n    img_size: 32\n    num_frames: 4\n")
    (tmp_path / "csv" / "version_0").mkdir(parents=True)
    (tmp_path / "csv" / "version_0" / "metrics.csv").write_text("epoch,step,val/loss\n0,1,0.75\n1,2,0.5\n")
    out = export(ckpt, "safetensors", tmp_path / "out" / "surgvista.safetensors")
    _, meta = read_checkpoint(out)
    card = meta["card"]
    assert card == json.loads(out.with_suffix(".json").read_text())
    assert card["hyper_parameters"] == {"batch_size": 2, "base_lr": 1.5e-4} and card["epoch"] == 3
    assert card["pos_embed"] == "sincos3d" and card["architecture"]["img_size"] == 32
    assert card["architecture"]["embed_dim"] == ARCH["embed_dim"] and card["num_tensors"] == len(ours.state_dict())
    assert len(card["data_manifest_hash"]) == 64 and card["data_manifests"][0]["sha256"]
    assert card["metrics"]["ModelCheckpoint.best_model_score"] == 0.25 and card["metrics"]["last.val/loss"] == 0.5
    back = student(seed=12)
    assert load_backbone(out, back).layout == "safetensors/surgvista"
    assert_same_state(ours, back)


def test_hf_round_trip_is_bit_exact(tmp_path):
    ours = student("sinusoid1d", image_decoder=False)
    with torch.no_grad():
        ours.down_vid.bias.zero_()
    out = export(
        lightning_ckpt(tmp_path, ours), "hf", tmp_path / "hf", num_heads=4, decoder_heads=2, img_size=32, num_frames=4
    )
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["VideoMAEForPreTraining"] and config["num_frames"] == 4
    back = student("sinusoid1d", image_decoder=False, seed=13)
    report = load_backbone(out, back)
    assert report.layout == "hf_dir/hf" and report.ok
    assert_same_state(ours, back)


def test_hf_export_of_a_trained_pixel_decoder_falls_back_to_the_encoder(tmp_path):
    ours = student("sinusoid1d", image_decoder=False)  # random (non-zero) down_vid.bias: not representable in HF
    ckpt = lightning_ckpt(tmp_path, ours)
    with pytest.raises(ExportError, match="down_vid.bias is non-zero"):
        export(ckpt, "hf", tmp_path / "hf_pre", hf_arch="pretraining", img_size=32, num_frames=4, num_heads=4)
    out = export(ckpt, "hf", tmp_path / "hf", img_size=32, num_frames=4, num_heads=4)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["VideoMAEModel"]
    transformers = pytest.importorskip("transformers")
    hf = transformers.VideoMAEModel.from_pretrained(out).eval()
    video = torch.randn(1, 3, 4, 32, 32)
    mask = torch.zeros(1, 32, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(
            hf(video.transpose(1, 2)).last_hidden_state, ours.forward_encoder(video, mask), rtol=0, atol=1e-5
        )


def test_hf_export_refuses_a_3d_sincos_model(tmp_path):
    ckpt = lightning_ckpt(tmp_path, student("sincos3d"))
    with pytest.raises(ExportError, match="refusing to export a sincos3d position embedding"):
        export(ckpt, "hf", tmp_path / "hf", img_size=32, num_frames=4, num_heads=4)
    assert not (tmp_path / "hf").exists()
    torch.save({"model": classifier().state_dict()}, tmp_path / "ft.pth")  # no table stored: kind unknown
    with pytest.raises(ExportError, match="position-table kind is unknown"):
        export(tmp_path / "ft.pth", "hf", tmp_path / "hf", img_size=32, num_frames=4, num_heads=4)


def test_export_refuses_non_finite_weights_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """The same finite-checked reader as load_backbone: one error naming the file and the bad tensors."""
    ours = student("sinusoid1d", image_decoder=False)
    with torch.no_grad():
        ours.down_vid.bias.zero_()
        ours.blocks[1].mlp.fc1.weight[0, 0] = float("nan")
        ours.blocks[1].mlp.fc2.weight[0, :2] = float("inf")
    ckpt = lightning_ckpt(tmp_path, ours)
    bad = r"last\.ckpt: tensor 'blocks\.1\.mlp\.fc1\.weight' holds 1 non-finite .*'blocks\.1\.mlp\.fc2\.weight'"
    with pytest.raises(CheckpointError, match=bad):
        canonical_state(ckpt)
    for fmt, name in (("original", "e.pth"), ("safetensors", "e.safetensors"), ("hf", "hf")):
        out = tmp_path / "exports" / name
        with pytest.raises(CheckpointError, match=bad):
            export(ckpt, fmt, out, img_size=32, num_frames=4, num_heads=4, decoder_heads=2)
        assert not out.exists() and not out.with_suffix(".json").exists()
    assert not (tmp_path / "exports").exists()
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    out = tmp_path / "cli" / "e.pth"
    with pytest.raises(SystemExit) as exit_:
        main([f"ckpt={ckpt}", "format=original", f"out={out}"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "fc1.weight" in err and "last.ckpt" in err
    assert not (tmp_path / "cli").exists()


def test_fine_tuning_init_from_export_equals_init_from_lightning(tmp_path):
    """Model-level stand-in for the first-step-loss check: same classifier state and outputs from either file."""
    ours = student()
    ckpt = lightning_ckpt(tmp_path, ours)
    exported = export(ckpt, "original", tmp_path / "surgvista.pth")
    a, b = classifier(), classifier()
    randomize(b, seed=99)  # different starting values everywhere: loading must overwrite all encoder weights
    with torch.no_grad():
        b.fc_norm.load_state_dict(a.fc_norm.state_dict())
        b.head.load_state_dict(a.head.state_dict())
    load_backbone(ckpt, a)
    load_backbone(exported, b)
    assert_same_state(a, b)
    video = torch.randn(2, 3, GEOM["num_frames"], GEOM["img_size"], GEOM["img_size"])
    target = torch.tensor([1, 3])
    a.train(), b.train()
    torch.manual_seed(0)
    loss_a = torch.nn.functional.cross_entropy(a(video), target)
    torch.manual_seed(0)
    loss_b = torch.nn.functional.cross_entropy(b(video), target)
    assert torch.equal(loss_a, loss_b)


@pytest.mark.slow
def test_real_lightning_checkpoint_loads_and_exports(tmp_path, demo_root):
    """A checkpoint written by an actual (1-step) fit: weights_only loading, export and reload."""
    import lightning as L
    from test_train import make_data, make_module

    L.seed_everything(0)
    module = make_module()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)],
    )
    trainer.fit(module, datamodule=make_data(demo_root))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    fresh = make_module().student
    report = load_backbone(ckpt, fresh)
    assert report.layout == "lightning/surgvista" and report.ok and report.meta["hyper_parameters"]["batch_size"] == 2
    assert_same_state(module.student, fresh)
    out = export(ckpt, "safetensors", tmp_path / "student.safetensors")
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["global_step"] == 1 and card["architecture"]["img_size"] == 64 and card["pos_embed"] == "sincos3d"
    again = make_module().student
    load_backbone(out, again)
    assert_same_state(module.student, again)
