"""Daily-use behaviour of the entry points: fine-tuning experiments choose their accelerator, eval run folders."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate


def _trainer_cfg(experiment: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "paths.root_dir=/x", "paths.output_dir=/x"])
    return cfg.trainer


@pytest.mark.parametrize("experiment", ["phase_cholec80", "triplet_cholect50", "cvs_endoscapes"])
def test_finetuning_experiments_fall_back_to_one_cpu_process_without_cuda(experiment, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    t = _trainer_cfg(experiment)
    assert (t.accelerator, t.strategy, t.devices, t.precision) == ("cpu", "auto", 1, 32)
    trainer = instantiate(t, default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False)
    assert trainer.num_devices == 1 and type(trainer.accelerator).__name__ == "CPUAccelerator"


def test_finetuning_experiments_keep_the_reference_recipe_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    t = _trainer_cfg("phase_cholec80")
    assert (t.accelerator, t.strategy, t.devices, t.precision) == ("gpu", "ddp", 2, "16-mixed")


def test_extras_enforce_tags_and_ignore_warnings():
    import warnings

    from omegaconf import OmegaConf

    from surgvista.run import apply_extras

    with pytest.raises(ValueError, match="tags is empty but extras.enforce_tags"):
        apply_extras(OmegaConf.create({"tags": [], "extras": {"enforce_tags": True}}))
    apply_extras(OmegaConf.create({"tags": [], "extras": {"enforce_tags": False}}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_extras(OmegaConf.create({"tags": ["x"], "extras": {"ignore_warnings": True}}))
        warnings.warn("noise", UserWarning, stacklevel=1)
    assert not caught


def test_dotenv_files_fill_but_never_override_the_environment(tmp_path, monkeypatch):
    from surgvista.utils.config_dirs import load_env_files

    (tmp_path / ".env").write_text("SURGVISTA_TEST_A=from_file\nSURGVISTA_TEST_B=from_file\n")
    monkeypatch.setenv("SURGVISTA_TEST_A", "from_env")
    monkeypatch.delenv("SURGVISTA_TEST_B", raising=False)
    assert load_env_files(tmp_path / ".env", tmp_path / "missing.env") == [tmp_path / ".env"]
    import os

    assert os.environ["SURGVISTA_TEST_A"] == "from_env" and os.environ["SURGVISTA_TEST_B"] == "from_file"
    monkeypatch.delenv("SURGVISTA_TEST_B")


def test_progress_bar_shows_learning_rates_in_scientific_notation(monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from surgvista.callbacks.progress import ProgressBar

    monkeypatch.setattr(
        RichProgressBar, "get_metrics", lambda self, t, m: {"lr": 0.0025, "lr-AdamW": 1e-5, "loss": 0.5}
    )
    assert ProgressBar().get_metrics(None, None) == {"lr": "2.50e-03", "lr-AdamW": "1.00e-05", "loss": 0.5}


def test_pretraining_run_logs_config_once_labels_panels_and_drops_tips(demo_root, tmp_path, caplog, monkeypatch):
    import logging
    import warnings

    import yaml
    from helpers import small_demo_overrides
    from PIL import Image

    from surgvista.run import train

    overrides = ["experiment=demo", *small_demo_overrides(demo_root), f"paths.output_dir={tmp_path}",
                 f"paths.work_dir={tmp_path}", "callbacks.rich_progress_bar=null"]  # fmt: skip
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    assert not [w for w in caught if "in eval mode" in str(w.message)]  # the frozen teacher is not reported
    hparams = yaml.safe_load((tmp_path / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams["model"]["base_lr"] == cfg.model.base_lr and "base_lr" not in hparams  # nested once, no flat copy
    assert hparams["params"]["total"] > hparams["params"]["trainable"] > 0  # the frozen teacher is not trainable
    assert "Tip:" not in caplog.text
    train_panel = Image.open(next((tmp_path / "train_reconstruction").glob("*.png")))
    val_panels = sorted((tmp_path / "val_reconstruction").glob("*.png"))
    assert len(val_panels) == 1 and Image.open(val_panels[0]).size == train_panel.size  # labelled like train
    assert train_panel.size[0] % 16 == 96 % 16 and train_panel.size[1] % 16 == 18 % 16  # margin and caption band


def test_eval_figures_are_saved_and_sent_to_the_active_loggers(tmp_path):
    import numpy as np
    from PIL import Image

    from surgvista.evaluation.reconstruction import log_image

    class WandbLogger:  # log_image dispatches on the logger class's name
        def __init__(self):
            self.calls = []

        def log_image(self, key, images, step):
            self.calls.append((key, images[0].shape, step))

    logger, image = WandbLogger(), np.full((20, 30, 3), 7, np.uint8)
    path = log_image([logger], "test/confusion_matrix", image, 3, tmp_path / "plots", filename="confusion_matrix.png")
    assert path == tmp_path / "plots" / "confusion_matrix.png"
    assert np.array_equal(np.asarray(Image.open(path)), image)
    assert logger.calls == [("test/confusion_matrix", (20, 30, 3), 3)]
