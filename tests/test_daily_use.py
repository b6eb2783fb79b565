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
