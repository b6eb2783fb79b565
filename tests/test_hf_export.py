"""Hugging Face export of checkpoints written by real (tiny) fits: ``model=videomae_hf`` pre-training →
``VideoMAEForPreTraining``, a fine-tuned classifier → ``VideoMAEForVideoClassification`` with ``id2label``; both give
our model's outputs to 1e-5 through ``transformers``; the folder has a preprocessor config and a model card."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import ROOT, small_demo_overrides

transformers = pytest.importorskip("transformers")  # dev dependency

from surgvista.checkpoints.export import export  # noqa: E402
from surgvista.cli.export import main  # noqa: E402
from surgvista.data.annotations import CHOLEC80_PHASES  # noqa: E402

ATOL = 1e-5


def _pretrain_cfg(demo_root, out):
    from hydra import compose, initialize_config_dir

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    overrides = [
        "experiment=demo",
        "model=videomae_hf",
        "model.student.preset=tiny",
        "model.student.pixel_decoder_depth=1",
        *small_demo_overrides(demo_root),
        "trainer.limit_train_batches=2",
        "model.recon_every_n_steps=0",
        "callbacks.rich_progress_bar=null",
        f"paths.output_dir={out}",
        f"paths.work_dir={out}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_videomae_hf_pretraining_checkpoint_exports_to_videomae_for_pretraining(demo_root, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from surgvista.run import train

    run = tmp_path / "run"
    train(_pretrain_cfg(demo_root, run))
    ckpt = run / "checkpoints" / "last.ckpt"
    module = instantiate(OmegaConf.load(run / "config.yaml").model, _convert_="all")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    assert "student.down_vid.bias" not in state  # HF's encoder_to_decoder has no bias
    out = export(ckpt, "hf", tmp_path / "hf")  # geometry and heads from the run's config.yaml
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["VideoMAEForPreTraining"]
    hf = transformers.VideoMAEForPreTraining.from_pretrained(out, attn_implementation="eager").eval()
    ours = module.student.eval()
    video = torch.randn(2, 3, ours.num_frames, ours.img_size, ours.img_size, generator=torch.Generator().manual_seed(0))
    mask = module.masking(2, ours.token_grid)
    with torch.no_grad():
        _, pred = ours(video, mask)
        logits = hf(video.transpose(1, 2), bool_masked_pos=mask).logits
    torch.testing.assert_close(pred, logits, rtol=0, atol=ATOL)
    assert {"preprocessor_config.json", "README.md", "model.safetensors"} <= {p.name for p in out.iterdir()}


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory, demo_root):
    """A 2-step demo_phase fine-tuning with the HF-compatible classifier settings (1-D table, fc_norm eps 1e-5)."""
    from helpers import small_demo_set
    from test_finetune import _compose

    from surgvista.run import train

    out = tmp_path_factory.mktemp("ft")
    demo = [
        *small_demo_set(demo_root),
    ]
    hf = ["model.net.pos_embed=sinusoid1d", "model.net.fc_norm_eps=1e-5", "model.net.fc_drop_rate=0"]
    train(_compose("demo_phase", *demo, *hf, "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                   "+trainer.limit_val_batches=1", "test=false", out=out))  # fmt: skip
    return out


def test_finetuned_classifier_exports_to_videomae_for_video_classification(finetuned_run, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    ckpt = finetuned_run / "checkpoints" / "last.ckpt"
    out = export(ckpt, "hf", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["VideoMAEForVideoClassification"]
    assert [config["id2label"][str(i)] for i in range(7)] == list(CHOLEC80_PHASES)
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(out, attn_implementation="eager").eval()
    net = instantiate(OmegaConf.load(finetuned_run / "config.yaml").model.net).eval()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    video = torch.randn(3, 3, net.num_frames, net.img_size, net.img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(video.transpose(1, 2)).logits, net(video), rtol=0, atol=ATOL)
    processor = transformers.VideoMAEImageProcessor.from_pretrained(out)
    assert processor.crop_size["height"] == net.img_size and processor.image_mean[0] == pytest.approx(0.485)
    card = (out / "README.md").read_text()
    assert "license: apache-2.0" in card and "CalotTriangleDissection" in card and "base_lr" in card


def test_finetuned_sincos_model_exports_to_safetensors_and_refuses_hf_in_one_line(tmp_path, capsys, monkeypatch):
    from test_checkpoints import classifier

    net = classifier()  # 3-D sin-cos table: no HF equivalent
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "epoch": 1,
                "class_names": [f"c{i}" for i in range(net.num_classes)]}, ckpt)  # fmt: skip
    assert main([f"ckpt={ckpt}", "format=safetensors", f"out={tmp_path / 'ft.safetensors'}"]) == 0
    card = json.loads((tmp_path / "ft.json").read_text())
    assert card["architecture"]["embed_dim"] == net.embed_dim and card["num_tensors"] == len(net.state_dict())
    capsys.readouterr()
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main([f"ckpt={ckpt}", "format=hf", f"out={tmp_path / 'hf'}", "pos_embed=sincos3d"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and len(err.strip().splitlines()) == 1 and "refusing to export a sincos3d" in err
