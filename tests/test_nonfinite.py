"""Non-finite safety: a poisoned step is skipped on the device, K bad steps in a row stop the run with the last
checkpoint's weights restored, no checkpoint with NaN/inf is ever written, and a resumed run keeps the counters."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import tiny_pretrain_module
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from surgvista.checkpoints.io import SafeCheckpointIO, nonfinite_entries
from surgvista.models.classifier import VideoClassifier
from surgvista.modules.finetune import PhaseModule


def tiny_phase(**kw) -> PhaseModule:
    net = VideoClassifier(3, preset="tiny", img_size=32, num_frames=4, drop_path_rate=0.0)
    return PhaseModule(net, batch_size=2, warmup_epochs=0, mixup=0.0, cutmix=0.0, relaxed=False, dataset="demo", **kw)


def clips(steps: int, labels: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    items = [{"video": torch.randn(3, 4, 32, 32, generator=g), "target": i % 3} for i in range(2 * steps)]
    return DataLoader(items, batch_size=2)


class Poison(Callback):
    """NaN video from batch ``start`` on (``count`` batches); records parameters and AdamW step counts."""

    def __init__(self, start: int, count: int = 1) -> None:
        self.start, self.count = start, count
        self.params: list[torch.Tensor] = []
        self.adam_steps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start <= batch_idx < self.start + self.count:
            batch["video"].fill_(float("nan"))
        self._record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._record(trainer, pl_module)

    def _record(self, trainer, pl_module):
        self.params.append(torch.cat([p.detach().flatten() for p in pl_module.parameters()]).clone())
        state = trainer.optimizers[0].state
        self.adam_steps.append(float(next(iter(state.values()))["step"]) if state else 0.0)


def trainer(tmp_path, *callbacks, steps: int = 6, **kw) -> L.Trainer:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=-1)
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[SafeCheckpointIO()],
        callbacks=[ckpt, *callbacks],
        default_root_dir=tmp_path,
        log_every_n_steps=1,
        **kw,
    )


@pytest.mark.parametrize("make", [tiny_pretrain_module, tiny_phase], ids=["pretrain", "finetune"])
def test_poisoned_step_is_skipped_on_device_and_training_continues(tmp_path, make):
    torch.manual_seed(0)
    poison = Poison(start=2)
    t = trainer(tmp_path, poison)
    t.fit(make(), clips(6))
    assert t.global_step == 6
    moved = [not torch.equal(a, b) for a, b in zip(poison.params, poison.params[1:])]
    assert moved == [True, True, False, True, True, True]  # step 2's update was skipped, the others applied
    assert poison.adam_steps == [0, 1, 2, 2, 3, 4, 5]  # AdamW's step count did not advance on the bad step
    assert float(t.callback_metrics["train/skipped_steps"]) == 1.0
    assert all(torch.isfinite(p).all() for p in poison.params)


class PoisonSteps(Callback):
    """NaN video on the given global steps (the same optimiser steps in a run and in its resumed continuation)."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps:
            batch["video"].fill_(float("nan"))


def test_resumed_finetuning_run_keeps_the_guard_counters(tmp_path):
    """Bad steps 1, 4, 5 of 6: a fine-tuning run stopped after step 4 and resumed from last.ckpt ends with the
    uninterrupted run's counters (3 skipped, 2 in a row), in its metrics and in its last.ckpt."""
    bad = {1, 4, 5}
    counters = {}
    for name, stops in (("full", [6]), ("resumed", [5, 6])):
        torch.manual_seed(0)
        module, last = tiny_phase(), tmp_path / name / "ckpt" / "last.ckpt"
        for steps in stops:
            t = trainer(tmp_path / name, PoisonSteps(bad), steps=steps)
            t.fit(module, clips(6), ckpt_path=last if last.exists() else None)
            module = tiny_phase()  # the continuation starts from the checkpoint alone
        saved = torch.load(last, map_location="cpu", weights_only=True)
        assert saved["global_step"] == 6
        counters[name] = (float(t.callback_metrics["train/skipped_steps"]), saved.get("nonfinite_guard"))
    assert counters["resumed"] == counters["full"]
    assert counters["full"] == (3.0, {"skipped_steps": 3, "consecutive": 2})


def test_k_consecutive_bad_steps_stop_with_the_last_checkpoint_weights_restored(tmp_path):
    torch.manual_seed(0)
    module = tiny_pretrain_module(max_consecutive_nonfinite=3, nonfinite_check_every=1)
    t = trainer(tmp_path, Poison(start=2, count=10), steps=10)
    with pytest.raises(FloatingPointError, match="3 optimiser steps in a row up to step 5 had a non-finite"):
        t.fit(module, clips(10))
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    for name, value in saved["state_dict"].items():
        torch.testing.assert_close(module.state_dict()[name], value, rtol=0, atol=0)
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        assert not nonfinite_entries(torch.load(path, map_location="cpu", weights_only=False)), path


def test_checkpoint_with_nonfinite_weights_is_refused_and_the_previous_file_kept(tmp_path, caplog):
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "optimizer_states": []}, path)
    poisoned = {"state_dict": {"w": torch.tensor([1.0, float("nan"), 2.0])}, "optimizer_states": []}
    io.save_checkpoint(poisoned, path)
    assert "refusing to write checkpoint" in caplog.text and "w" in caplog.text
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_diverging_cli_run_stops_with_a_clear_error_and_only_finite_checkpoints(demo_root, tmp_path):
    from helpers import run_script, small_demo_overrides

    demo = [a for a in small_demo_overrides(demo_root) if not a.startswith("trainer.limit_train_batches")]
    proc = run_script(
        "train.py",
        "experiment=demo",
        *demo,
        "trainer.limit_train_batches=8",
        "model.base_lr=1e6",
        "model.max_consecutive_nonfinite=3",
        "model.nonfinite_check_every=1",
        "callbacks.model_checkpoint_steps.every_n_train_steps=1",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert proc.returncode != 0
    assert "optimiser steps in a row" in proc.stderr and "restored from the last finite checkpoint" in proc.stderr
    ckpts = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts
    for path in ckpts:
        assert not nonfinite_entries(torch.load(path, map_location="cpu", weights_only=True)), path
