"""``make demo`` twice in a row: fresh run folders, each step reads the checkpoint the previous step of the *same*
run wrote, and the eval run has its own folder with a config.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from helpers import ROOT, small_demo_data

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make_demo(demo_root, out):
    data = [
        *small_demo_data(demo_root),
        "data.batch_size=2",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "print_config=false",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    cmd = [
        "make", "-o", "install", "demo", f"PY={sys.executable}", f"DEMO_DIR={out}", f"DEMO_ARGS={' '.join(data)}",
        "DEMO_PRETRAIN_ARGS=model.recon_every_n_steps=0", "DEMO_PHASE_ARGS=data.eval_batch_size=8",
        "DEMO_PROBE_ARGS=--seeds 1 --max-train 8 --max-val 8",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.slow
def test_make_demo_twice_evaluates_the_second_runs_checkpoint(demo_root, tmp_path):
    first = _make_demo(demo_root, tmp_path)
    time.sleep(1.1)  # run folders are named by the second
    second = _make_demo(demo_root, tmp_path)
    runs = sorted(p for p in tmp_path.iterdir() if not p.is_symlink())
    assert len(runs) == 2
    run = runs[1]
    assert (tmp_path / "latest").resolve() == run.resolve()
    assert f"demo run: {run}" in second.stdout and f"demo run: {runs[0]}" in first.stdout
    finetune = yaml.safe_load((run / "finetune" / "config.yaml").read_text())
    assert finetune["model"]["ckpt"] == str(run / "pretrain" / "checkpoints" / "last.ckpt")
    evaluation = yaml.safe_load((run / "eval" / "config.yaml").read_text())
    assert evaluation["ckpt_path"] == str(run / "finetune" / "checkpoints" / "last.ckpt")
    assert evaluation["paths"]["output_dir"] == str(run / "eval")
    assert f"evaluating {run / 'finetune' / 'checkpoints' / 'last.ckpt'}" in second.stdout + second.stderr
    for r in runs:  # no versioned last-v1.ckpt anywhere: every step wrote into a fresh folder
        assert sorted(p.name for p in (r / "finetune" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (run / "eval" / "test" / "metrics.json").is_file() and (run / "pretrain" / "probe_vs_random.json").is_file()
