"""SLURM preemption: the configured signal makes train.py save last.ckpt after the current step, requeue the job
(``scontrol`` is a fake on PATH here) and exit; the same command started again resumes by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, small_demo_overrides
from lightning.pytorch.callbacks import Callback

from surgvista.callbacks.preemption import PreemptionCallback

FAKE_SCONTROL = '#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n'


def slurm_env(tmp_path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "pretrain",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    return {
        **os.environ,
        **slurm,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
        "WANDB_MODE": "offline",
        "HYDRA_FULL_ERROR": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.mark.slow
def test_slurm_signal_saves_requeues_and_the_requeued_job_resumes_by_itself(demo_root, tmp_path):
    env, run, marker = slurm_env(tmp_path), tmp_path / "run", tmp_path / "at_step_2"
    demo = [
        a for a in small_demo_overrides(demo_root) if not a.startswith(("trainer.max_epochs", "trainer.limit_train"))
    ]
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=demo",
        *demo,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        f"hydra.run.dir={run}",
    ]
    pause = [
        "+callbacks.pause._target_=fault_callbacks.PauseAtStep",
        "+callbacks.pause.step=2",
        f"+callbacks.pause.marker={marker}",
    ]
    proc = subprocess.Popen(
        [*args, *pause], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)  # SLURM's `--signal=USR1@120` before the time limit
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert "received SIGUSR1" in out and "preempted at step 3" in out
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3

    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # the requeued job
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"ckpt_path=auto: resuming from {last}" in again.stdout + again.stderr
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 8


def test_preemption_callback_is_off_outside_slurm_and_refuses_unknown_signals(monkeypatch):
    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(var, raising=False)
    before = signal.getsignal(signal.SIGUSR1)
    assert not PreemptionCallback().enabled and signal.getsignal(signal.SIGUSR1) == before
    with pytest.raises(ValueError, match="unknown signal 'SIGFOO'"):
        PreemptionCallback(signals=["SIGFOO"])



class SignalDuringStep(Callback):
    """Send this process ``SIGUSR1`` during optimiser step ``step`` (before its forward pass) and record every
    step's training loss as the module returned it (keyed by the step count after it)."""

    def __init__(self, step: int) -> None:
        self.step, self.losses = step, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])


def test_the_step_during_which_the_signal_arrives_is_logged(demo_root, tmp_path, monkeypatch):
    """The preempted step's train/loss is in metrics.csv, although log_every_n_steps would skip it (it was in no
    log: Lightning logs a step only after ``on_train_batch_end``, where the callback stops the run)."""
    import csv

    from helpers import compose

    import surgvista.run as run

    spy = SignalDuringStep(step=1)
    build = run.instantiate_group
    monkeypatch.setattr(run, "instantiate_group", lambda g: [spy, *build(g)] if g and "preemption" in g else build(g))
    demo = [a for a in small_demo_overrides(demo_root) if not a.startswith("trainer.log_every_n_steps")]
    cfg = compose("demo", *demo, "trainer.log_every_n_steps=50", "callbacks.preemption.enabled=true",
                  "callbacks.preemption.requeue=false", "callbacks.probe_monitor=null", out=tmp_path)  # fmt: skip
    before = signal.getsignal(signal.SIGUSR1)
    try:
        assert run.train(cfg) == {run.PREEMPTED: 1.0}
    finally:
        signal.signal(signal.SIGUSR1, before)
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    logged = {int(r["step"]): float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")}
    assert list(logged) == [1] and logged[1] == pytest.approx(spy.losses[2], rel=1e-6)  # the 2nd step, 0-based
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
