"""Exact mid-epoch resume, as a user meets it: a ``train.py`` run killed with SIGKILL after a mid-epoch checkpoint
and resumed from ``last.ckpt`` logs the same per-step losses as the uninterrupted run (pre-training, fine-tuning
with every augmentation on, a 2-process ``ddp_sim`` run and a 2-process FSDP2 run with sharded DCP checkpoints),
through the epoch boundary and the validations."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, free_ports, script_env, small_demo_data

STEPS_PER_EPOCH, EVERY = 6, 2  # checkpoints at global steps 2, 4 (mid-epoch), 6, ...


def demo_data(root: Path) -> list[str]:
    return [
        *small_demo_data(root),
        "data.batch_size=2",
        "trainer.max_epochs=2",
        f"trainer.limit_train_batches={STEPS_PER_EPOCH}",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        f"callbacks.model_checkpoint_steps.every_n_train_steps={EVERY}",
        "callbacks.rich_progress_bar=null",
        "print_config=false",
    ]


CASES = {
    # drop-path 0.1, tube masks, multi-scale crops made in a loader worker
    "pretrain": ["experiment=demo", "model.recon_every_n_steps=0", "data.num_workers=1"],
    # VideoMAE V2 dual masking: the decoder's running-cell phase and tie-breaks come from the saved mask generator
    "dual_mask": [
        "experiment=demo",
        "model.recon_every_n_steps=0",
        "model.decoder_mask_ratio=0.5",
        "data.num_workers=0",
    ],
    "finetune": [  # RandAugment, random erasing, Mixup/CutMix, drop-path and dropout all on
        "experiment=demo_phase",
        "test=false",
        "data.num_frames=4",
        "data.eval_batch_size=2",
        "data.auto_augment=rand-m7-n4-mstd0.5-inc1",
        "data.reprob=0.25",
        "model.mixup=0.8",
        "model.cutmix=1.0",
        "model.net.drop_path_rate=0.1",
        "data.num_workers=1",
    ],
    # V-JEPA: the EMA target encoder and the host-drawn multi-block masks resume too
    "vjepa": ["experiment=demo", "model=vjepa_tiny", "data.num_workers=1"],
    # 2 ranks, each with its own data shard and mask stream (in-process loading keeps the 2-core CI fast)
    "ddp_sim": ["experiment=demo", "model.recon_every_n_steps=0", "trainer=ddp_sim", "data.num_workers=0"],
    # FSDP2 on 2 CPU processes (gloo) with sharded distributed checkpoints (DCP folders)
    "fsdp2_dcp": [
        "experiment=demo",
        "model.recon_every_n_steps=0",
        "trainer=fsdp2_cpu",
        "data.num_workers=0",
        "trainer.strategy.save_distributed_checkpoint=true",
        "callbacks.probe_monitor=null",  # keeps the case short (the monitor under FSDP2: test_cli)
    ],
}


def start(*args: str, log: Path, port: int) -> subprocess.Popen:
    """``train.py args`` started in the background, its output to ``log`` and its DDP rendezvous on ``port`` (two
    runs share the 2-core CI; an inherited ``MASTER_PORT`` would be the same for both)."""
    env = script_env(port) | {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def finish(proc: subprocess.Popen, log: Path, check: bool = True) -> int:
    """Wait for a :func:`start`-ed run; with ``check``, its failure (and the end of its log) fails the test."""
    code = proc.wait(timeout=600)
    if check and code != 0:
        raise AssertionError(f"train.py failed ({code}):\n{log.read_text()[-6000:]}")
    return code


def logged(run_dir: Path) -> dict[tuple[str, int], float]:
    """``(metric, step) -> value`` of ``train/loss_step`` and ``val/loss`` from the run's newest CSV log."""
    newest = max((run_dir / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    out = {}
    with open(newest / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for name in ("train/loss_step", "val/loss"):
                if row.get(name):
                    out[(name, int(row["step"]))] = float(row[name])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_run_killed_mid_epoch_resumes_exactly(case, demo_root, tmp_path):
    args = [*CASES[case], *demo_data(demo_root)]
    kill = random.choice([3, 4, 5])  # a random mid-epoch step of the first epoch, after a mid-epoch checkpoint
    ckpt_step = kill // EVERY * EVERY
    ports = free_ports(2)
    full_run = start(*args, f"hydra.run.dir={tmp_path / 'full'}", log=tmp_path / "full.log", port=ports[0])
    run = tmp_path / "killed"
    killed = start(
        *args,
        f"hydra.run.dir={run}",
        "+callbacks.kill._target_=fault_callbacks.KillAtStep",
        f"+callbacks.kill.step={kill}",
        log=tmp_path / "killed.log",
        port=ports[1],
    )  # alongside the uninterrupted run: two processes for the 2-core CI
    assert finish(killed, tmp_path / "killed.log", check=False) != 0, f"the run was not killed at step {kill}"
    finish(full_run, tmp_path / "full.log")
    last = run / "checkpoints" / "last.ckpt"
    meta = last / "meta.pt" if last.is_dir() else last  # a DCP checkpoint is a folder
    assert torch.load(meta, map_location="cpu", weights_only=True)["global_step"] == ckpt_step
    orphan = run / "checkpoints" / ".last.ckpt.k3x9q1.tmp"  # what a save killed half-way leaves
    orphan.write_bytes(b"partial")

    resumed_log = tmp_path / "resumed.log"
    finish(start(*args, f"hydra.run.dir={run}", f"ckpt_path={last}", log=resumed_log, port=ports[0]), resumed_log)
    assert not orphan.exists()
    full, resumed = logged(tmp_path / "full"), logged(run)
    expected = {k: v for k, v in full.items() if k[1] >= ckpt_step}
    assert ("val/loss", STEPS_PER_EPOCH - 1) in expected and ("val/loss", 2 * STEPS_PER_EPOCH - 1) in expected
    assert len([k for k in expected if k[0] == "train/loss_step"]) == 2 * STEPS_PER_EPOCH - ckpt_step
    assert set(expected) <= set(resumed), f"kill at {kill}: missing {sorted(set(expected) - set(resumed))}"
    diffs = {k: abs(resumed[k] - v) for k, v in expected.items()}
    assert max(diffs.values()) <= 1e-6, f"killed at step {kill}, resumed from {ckpt_step}: {diffs}"
