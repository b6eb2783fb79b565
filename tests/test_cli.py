"""The Hydra entry points as users run them: demo run, eval, multirun, ddp_sim, config errors."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from helpers import ROOT, run_script, small_demo_overrides


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_root):
    out = tmp_path_factory.mktemp("run")
    proc = run_script("train.py", "experiment=demo", *small_demo_overrides(demo_root), f"hydra.run.dir={out}")
    return out, proc


def test_demo_run_writes_checkpoint_metrics_images_and_config(demo_run):
    out, proc = demo_run
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "checkpoints" / "epoch_000.ckpt").is_file()
    with open(out / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 3 and all(v > 0 for v in losses)
    assert any(r.get("val/loss") for r in rows) and any(r.get("train/grad_norm") for r in rows)
    images = sorted((out / "train_reconstruction").glob("step_*.png"))
    assert [p.name for p in images] == ["step_0000000.png", "step_0000002.png"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["student"]["preset"] == "tiny" and config["paths"]["output_dir"] == str(out)
    # Hydra's files, written by the run once its folder is checked and locked; the lock is gone at the end
    assert "experiment=demo" in yaml.safe_load((out / ".hydra" / "overrides.yaml").read_text())
    assert yaml.safe_load((out / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["output_dir"] == str(out)
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "demo.log").is_file()
    assert not (out / ".surgvista.lock").exists()
    assert "Checkpoints:" in proc.stdout + proc.stderr and "Reconstructions:" in proc.stdout + proc.stderr


def test_eval_validates_a_checkpoint(demo_run, demo_root, tmp_path):
    out, _ = demo_run
    proc = run_script(
        "eval.py",
        "experiment=demo",
        *small_demo_overrides(demo_root),
        f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path}",
    )
    assert "val/loss:" in proc.stdout


@pytest.mark.slow
def test_multirun_over_two_learning_rates(demo_root, tmp_path):
    run_script(
        "train.py",
        "-m",
        "experiment=demo",
        *small_demo_overrides(demo_root),
        "model.base_lr=0.001,0.002",
        f"hydra.sweep.dir={tmp_path}",
    )
    lrs = []
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "last.ckpt").is_file()
        lrs.append(yaml.safe_load((tmp_path / job / "config.yaml").read_text())["model"]["base_lr"])
    assert lrs == [0.001, 0.002]


def first_step_loss(run_dir) -> float:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        return next(float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step"))


def load_into_single_device_module(run_dir):
    """The run's ``last.ckpt`` must load strictly into a freshly built, unsharded module on one device."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    assert all(type(v) is torch.Tensor for v in state.values())  # full tensors, not DTensor shards
    module = instantiate(OmegaConf.load(run_dir / "config.yaml").model, _convert_="all")
    module.load_state_dict(state)
    assert set(state) == {f"student.{k}" for k in module.student.state_dict()}
    return ckpt


# Multi-process runs iterate the whole data on every rank (no distributed sampler): rank 0 then sees the
# single-process run's first batch and mask, so its first-step loss must equal the single-process one.
SAME_FIRST_BATCH = ["+trainer.use_distributed_sampler=false", "trainer.limit_train_batches=2"]


@pytest.mark.slow
def test_ddp_sim_two_process_fit(demo_run, demo_root, tmp_path):
    proc = run_script("train.py", "experiment=demo", *small_demo_overrides(demo_root), "trainer=ddp_sim",
                      *SAME_FIRST_BATCH, f"hydra.run.dir={tmp_path}")
    ckpt = load_into_single_device_module(tmp_path)
    assert ckpt["global_step"] == 2
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    assert first_step_loss(tmp_path) == pytest.approx(first_step_loss(demo_run[0]), abs=1e-4)


@pytest.mark.slow
def test_fsdp2_cpu_two_process_fit(demo_run, demo_root, tmp_path):
    proc = run_script("train.py", "experiment=demo", *small_demo_overrides(demo_root), "trainer=fsdp2_cpu",
                      *SAME_FIRST_BATCH, "callbacks.probe_monitor.every_n_epochs=1",
                      "callbacks.probe_monitor.max_train=8", "callbacks.probe_monitor.max_val=4",
                      f"hydra.run.dir={tmp_path}")
    out = proc.stdout + proc.stderr
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out
    assert "probe monitor (epoch 0)" in out  # the sharded student is gathered for the probe's features
    assert "FSDP2: fully_shard on 7 student blocks and the student root over a data-parallel mesh of 2" in out
    ckpt = load_into_single_device_module(tmp_path)
    assert ckpt["global_step"] == 2
    assert first_step_loss(tmp_path) == pytest.approx(first_step_loss(demo_run[0]), abs=1e-4)


def test_unknown_config_key_is_refused(tmp_path):
    proc = run_script(
        "train.py", "experiment=demo", "model.learning_rate=0.1", f"hydra.run.dir={tmp_path}", check=False
    )
    assert proc.returncode != 0
    assert "Could not override 'model.learning_rate'" in proc.stderr
    assert "Key 'learning_rate' is not in struct" in proc.stderr


def test_pretrain_surgvista_config_only_misses_data_dir_and_teacher(tmp_path):
    proc = run_script("train.py", "experiment=pretrain_surgvista", "--cfg", "job", cwd=tmp_path)
    cfg = yaml.safe_load(proc.stdout)
    missing = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else k)
        elif node == "???":
            missing.append(path)

    walk(cfg, "")
    assert sorted(missing) == ["model.teacher.ckpt", "paths.data_dir"]
    assert cfg["trainer"]["accumulate_grad_batches"] == 4 and cfg["trainer"]["devices"] == 8
    assert cfg["trainer"]["max_epochs"] == 201 and cfg["trainer"]["precision"] == "bf16-mixed"
    assert cfg["data"]["batch_size"] == 64 and cfg["data"]["sampling_rate"] == 4
    assert cfg["model"]["warmup_epochs"] == 40 and cfg["model"]["masking"] == {
        "_target_": "surgvista.layers.masking.MaskGenerator",
        "kind": "tube",
        "ratio": 0.85,
    }
    assert cfg["model"]["student"]["preset"] == "base" and cfg["model"]["teacher"]["preset"] == "large"
    assert len(cfg["data"]["include"]) == 9 and cfg["data"]["_target_"].endswith("MixtureDataModule")


def test_configs_compose_and_contain_no_absolute_paths():
    bad = [p for p in (ROOT / "conf").rglob("*.yaml") if "/home/" in p.read_text() or "/data/" in p.read_text()]
    assert not bad


@pytest.mark.slow
def test_wandb_logger_runs_offline_and_receives_reconstructions(demo_root, tmp_path):
    run_script(
        "train.py", "experiment=demo", *small_demo_overrides(demo_root), "logger=wandb", f"hydra.run.dir={tmp_path}"
    )
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].rglob("media/images/train/reconstruction*.png"))
