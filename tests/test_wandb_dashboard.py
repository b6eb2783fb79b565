"""W&B dashboards (docs/benchmark.md#wb-dashboards): real offline runs, read back from their transaction log.

Offline, wandb 0.31 writes no ``wandb-summary.json``: everything the server would get is in
``offline-run-*/run-<id>.wandb`` (a LevelDB-style log of ``wandb_internal_pb2.Record`` protobufs), and the media
(images, tables) under ``offline-run-*/files/media``. :func:`read_run` parses the log the way ``wandb sync`` does.
"""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, small_demo_set
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from PIL import Image

from surgvista.callbacks.wandb_summary import job_type, metric_goal, read_csv_table, sweep_group

BLOCK = 32768  # the log's block size; a record header is crc32 (4), length (2), type (1: full, 2-4: first/middle/last)


def records(path: Path):
    """The ``Record`` protobufs of a ``.wandb`` transaction log, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B transaction log"
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block padding
            pos += left
            continue
        if pos + 7 + length > len(data):  # a record still being written
            return
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _put(tree: dict, item) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = json.loads(item.value_json)


def finished_log(run_dir: Path, timeout: float = 30.0) -> list:
    """The records of a run's log once its ``exit`` record is written (the wandb-core service writes the log in the
    background: ``run.finish()`` may return before the file is complete)."""
    (log,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        found = list(records(log))
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def read_run(run_dir: Path) -> dict:
    """``{"run", "config", "metrics", "summary", "history"}`` of an offline run folder."""
    out = {"run": None, "config": {}, "metrics": {}, "summary": {}, "history": []}
    for r in finished_log(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
            for item in r.run.config.update:
                _put(out["config"], item)
        elif kind == "config":
            for item in r.config.update:
                _put(out["config"], item)
        elif kind == "metric" and r.metric.name:
            out["metrics"][r.metric.name] = r.metric
        elif kind == "summary":
            for item in r.summary.update:
                _put(out["summary"], item)
        elif kind == "history":
            row = {}
            for item in r.history.item:
                _put(row, item)
            out["history"].append(row)
    return out


def offline_runs(folder: Path) -> list[Path]:
    return sorted((folder / "wandb").glob("offline-run-*"))


def _compose(*overrides: str, config: str = "train", experiment: str = "demo_phase", tiny: bool = True):
    """A composed config; ``tiny``: the tiny student at 32 px and 4 frames on CPU."""
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    small = [] if not tiny else [
        "trainer=cpu", "trainer.devices=1", "trainer.precision=32", "print_config=false", "model.net.preset=tiny",
        "model.net.drop_path_rate=0", "data.input_size=32", "data.num_frames=4", "data.sampling_rate=2",
        "data.batch_size=2", "data.eval_batch_size=8", "data.num_workers=0",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config, overrides=[f"experiment={experiment}", *small, *overrides])


# ------------------------------------------------------------------------------------------------ pure rules
def test_metric_goals_follow_the_metric_names():
    assert metric_goal("val/loss") == metric_goal("val/loss_latent") == "min"
    for name in ("val/top1", "val/accuracy", "val/f1", "val/jaccard", "val/mAP", "val/mAP_ivt", "val/edit",
                 "val/f1@25", "val/relaxed_jaccard", "val/video_accuracy_mean", "val/accuracy_top5"):  # fmt: skip
        assert metric_goal(name) == "max", name
    for name in ("val/video_accuracy_std", "val/target_std", "train/ema_momentum", "val/frames"):
        assert metric_goal(name) is None, name


def test_job_type_and_group_from_the_config():
    from surgvista.run import fill_wandb_fields

    expected = {"demo": "pretrain", "demo_phase": "finetune", "demo_tecno": "tecno", "probe_demo": "probe"}
    for experiment, stage in expected.items():
        cfg = _compose("logger=wandb", experiment=experiment, tiny=False)
        fill_wandb_fields(cfg, "fit")
        assert cfg.logger.wandb.job_type == stage, experiment
        assert cfg.logger.wandb.group is None  # a single run (no Hydra multirun): no group
    cfg = _compose("logger=wandb", "ckpt_path=x.ckpt", config="eval", tiny=False)
    fill_wandb_fields(cfg, "eval")
    assert cfg.logger.wandb.job_type == "eval"
    cfg = _compose("logger=many_loggers", "logger.wandb.job_type=mine", "logger.wandb.group=g", tiny=False)
    fill_wandb_fields(cfg, "fit")
    assert (cfg.logger.wandb.job_type, cfg.logger.wandb.group) == ("mine", "g")  # set by the user: kept
    assert "job_type" not in cfg.logger.csv
    assert job_type("my.pkg.modules.mine.MyModule", "fit") == "mine"
    assert sweep_group("/x/logs/probe_demo/multiruns/2026-01-02_03-04-05") == "probe_demo/multiruns/2026-01-02_03-04-05"


# ------------------------------------------------------------------------------------------------ one real run
@pytest.fixture(scope="module")
def finetune_run(demo_root, tmp_path_factory) -> Path:
    """A 2-epoch demo_phase fine-tuning with test=true, logged to W&B offline (in-process)."""
    from surgvista.run import train

    out = tmp_path_factory.mktemp("wandb_run")
    cfg = _compose(
        *small_demo_set(demo_root), "logger=wandb", "trainer.max_epochs=2", "+trainer.limit_train_batches=2",
        "trainer.log_every_n_steps=1", "data.val_target_stride=4", "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null", "model.ci_resamples=50", f"paths.output_dir={out}", f"paths.work_dir={out}",
    )  # fmt: skip
    train(cfg)
    return out


def test_run_has_group_job_type_and_best_summaries(finetune_run):
    (run_dir,) = offline_runs(finetune_run)
    run = read_run(run_dir)
    assert run["run"].job_type == "finetune" and run["run"].run_group == ""  # a single run: no group
    assert run["config"]["logger"]["wandb"]["job_type"] == "finetune"
    # define_metric: max for scores, min for losses, against Lightning's step axis
    top1, loss = run["metrics"]["val/top1"], run["metrics"]["val/loss"]
    assert top1.summary.max and not top1.summary.min and top1.step_metric == "trainer/global_step"
    assert loss.summary.min and not loss.summary.max
    # reference: the validation rows of the history
    rows = [h for h in run["history"] if "val/top1" in h]
    assert len(rows) == 2
    summary = run["summary"]
    assert summary["val/top1"] == {"max": pytest.approx(max(h["val/top1"] for h in rows))}
    assert summary["val/loss"] == {"min": pytest.approx(min(h["val/loss"] for h in rows))}
    names = [k for k in rows[0] if k.startswith("val/") and metric_goal(k)]
    assert {"val/top1", "val/loss", "val/jaccard", "val/f1"} <= set(names)
    for name in names:
        sign = 1 if metric_goal(name) == "max" else -1
        finite = [h for h in rows if math.isfinite(h[name])]  # NaN (a phase never seen) is no best value
        if not finite:
            assert f"best/{name}" not in summary, name
            continue
        best = max(finite, key=lambda h: sign * h[name])  # the first row reaching the best value
        assert summary[f"best/{name}"] == pytest.approx(best[name]), name
        assert summary[f"best/{name}_step"] == best["trainer/global_step"], name
        assert summary[f"best/{name}_epoch"] == best["epoch"], name
    assert "best/val/video_accuracy_std" not in summary
    assert [h["trainer/global_step"] for h in rows] == [1, 3]  # the dashboard's x-axis: 2 steps per epoch
    assert summary["best/val/loss_step"] in (1, 3)


def test_run_has_the_per_video_table_and_the_figures(finetune_run):
    (run_dir,) = offline_runs(finetune_run)
    run = read_run(run_dir)
    entry = next(h["test/per_video"] for h in run["history"] if "test/per_video" in h)
    assert entry["_type"] == "table-file"
    table = json.loads((run_dir / "files" / entry["path"]).read_text())
    columns, rows = read_csv_table(finetune_run / "test" / "per_video.csv")
    assert table["columns"] == columns == next(csv.reader((finetune_run / "test" / "per_video.csv").open()))
    assert table["data"] == rows and [r[0] for r in rows] == ["video03"]
    ci = json.loads((finetune_run / "test" / "ci.json").read_text())["metrics"]
    entry = next(h["test/ci"] for h in run["history"] if "test/ci" in h)
    table = json.loads((run_dir / "files" / entry["path"]).read_text())
    assert table["data"] == [[k, v["value"], v["lo"], v["hi"]] for k, v in ci.items()]
    for name in ("confusion_matrix", "ribbon_video03"):  # the figures, as saved under <run>/test/plots
        key, saved = f"test/{name}", f"{name}.png"
        entry = next(h[key] for h in run["history"] if key in h)
        assert entry["_type"] == "images/separated" and entry["count"] == 1
        logged = np.asarray(Image.open(run_dir / "files" / entry["filenames"][0]).convert("RGB"))
        assert np.array_equal(logged, np.asarray(Image.open(finetune_run / "test" / "plots" / saved).convert("RGB")))


# ------------------------------------------------------------------------------------------------ a -m sweep
def test_sweep_jobs_share_one_group(demo_root, tmp_path, monkeypatch):
    """A real two-job ``train.py -m`` sweep (in-process, no training: each job only starts its W&B run)."""
    from surgvista.cli.train import run

    sweep = tmp_path / "sweep"
    monkeypatch.setattr(sys, "argv", [
        "train.py", "-m", "experiment=demo_phase", *small_demo_set(demo_root), "data.input_size=32",
        "data.num_frames=4", "model.net.preset=tiny", "trainer=cpu", "logger=wandb", "train=false", "test=false",
        "print_config=false", "optimized_metric=null", "seed=1,2", f"hydra.sweep.dir={sweep}",
        "hydra/job_logging=none", "hydra/hydra_logging=none",  # leave this process's logging alone
    ])  # fmt: skip
    try:
        run()
    finally:
        HydraConfig.instance().cfg = None  # the last job's config: later in-process runs are no sweep jobs
    runs = [read_run(offline_runs(sweep / str(job))[0])["run"] for job in (0, 1)]
    assert [r.run_group for r in runs] == [sweep_group(sweep)] * 2
    saved = [OmegaConf.load(sweep / str(job) / "config.yaml").logger.wandb for job in (0, 1)]  # what config.yaml says
    assert [(c.group, c.job_type) for c in saved] == [(runs[0].run_group, "finetune")] * 2
    assert [r.job_type for r in runs] == ["finetune"] * 2
    assert runs[0].run_id != runs[1].run_id


@pytest.mark.parametrize("how", ["cli", "end_of_sweep"])
def test_leaderboard_goes_to_wandb_in_the_sweep_group(tmp_path, how):
    from surgvista.cli.leaderboard import main
    from surgvista.evaluation.leaderboard import LeaderboardCallback

    for job, (protocol, top1) in enumerate((("linear", 61.5), ("knn", 70.25))):
        (tmp_path / str(job)).mkdir()
        rec = {"dataset": "demo", "backbone": "b", "params": 5e6, "protocol": protocol, "metrics": {"test/top1": top1}}
        (tmp_path / str(job) / "probe.json").write_text(json.dumps(rec))
    if how == "cli":
        assert main([str(tmp_path), "--wandb"]) == 0
    else:  # the Hydra callback of a probe grid run with logger=wandb (the sweep's master config)
        wandb_cfg = {"_target_": "lightning.pytorch.loggers.wandb.WandbLogger", "project": "p", "offline": True}
        LeaderboardCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}},
                                                                "logger": {"wandb": wandb_cfg}}))  # fmt: skip
    (run_dir,) = offline_runs(tmp_path)
    run = read_run(run_dir)
    assert (run["run"].job_type, run["run"].run_group) == ("leaderboard", sweep_group(tmp_path))
    assert run["run"].project == ("surgvista" if how == "cli" else "p")
    entry = next(h["leaderboard"] for h in run["history"] if "leaderboard" in h)
    table = json.loads((run_dir / "files" / entry["path"]).read_text())
    assert (table["columns"], table["data"]) == read_csv_table(tmp_path / "leaderboard.csv")
    assert [r[table["columns"].index("top1")] for r in table["data"]] == [70.25, 61.5]


def test_leaderboard_without_wandb_logger_starts_no_run(tmp_path):
    from surgvista.evaluation.leaderboard import LeaderboardCallback

    rec = {"dataset": "demo", "backbone": "b", "params": 5e6, "protocol": "knn", "metrics": {"test/top1": 1.0}}
    (tmp_path / "probe.json").write_text(json.dumps(rec))
    csv_logger = {"_target_": "lightning.pytorch.loggers.csv_logs.CSVLogger"}
    LeaderboardCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}},
                                                            "logger": {"csv": csv_logger}}))  # fmt: skip
    assert (tmp_path / "leaderboard.csv").is_file() and not (tmp_path / "wandb").exists()
