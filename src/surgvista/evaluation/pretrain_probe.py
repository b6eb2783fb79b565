"""Does pre-training help? k-NN / linear-probe accuracy of a pre-training run's student vs random init.

``python -m surgvista.pretrain_probe <pre-training run dir> [--seeds 3] [--max-train N] [--max-val N]``

Reads ``<run>/checkpoints/last.ckpt`` and the run's ``config.yaml`` (the student architecture and the run's
``callbacks.probe_monitor`` labelled manifests), found as for every run checkpoint by
:func:`surgvista.checkpoints.run_folder.run_config_file` (``<run>/config.yaml``). The pre-trained student and
``--seeds`` randomly initialised students of the same architecture (init seeds 0..n-1) are run once over the same
evenly spaced labelled clips; each gets a k-NN and a linear probe (linear-probe seed = the init seed; the
pre-trained student's k-NN is deterministic). Prints val top-1 mean ± sample std over the seeds and writes
``<run>/probe_vs_random.json``.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from surgvista.callbacks.probing import ProbeMonitor
from surgvista.checkpoints.read import torch_load
from surgvista.checkpoints.run_folder import run_config_file
from surgvista.utils.errors import ConfigError
from surgvista.utils.seeding import seeded


def _load_student(cfg, ckpt: Path) -> torch.nn.Module:
    student = instantiate(cfg.model.student, _convert_="all")
    state = torch_load(ckpt)["state_dict"]
    student.load_state_dict({k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")})
    return student.eval()


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def compare(run_dir: str | Path, seeds: int = 3, max_train: int | None = None, max_val: int | None = None) -> dict:
    """``{"pretrained": {...}, "random_init": {...}}``: per-seed top-1 lists and their mean/std, per probe."""
    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    cfg_path = run_config_file(ckpt)
    if cfg_path is None:
        raise FileNotFoundError(f"{Path(run_dir) / 'config.yaml'} not found: {run_dir} is not a training run folder")
    cfg = OmegaConf.load(cfg_path)
    monitor_cfg = OmegaConf.select(cfg, "callbacks.probe_monitor")
    if monitor_cfg is None or not monitor_cfg.get("train_manifest"):
        raise ConfigError(f"{cfg_path}: no callbacks.probe_monitor.train_manifest (a labelled manifest)")
    limits = {k: v for k, v in (("max_train", max_train), ("max_val", max_val)) if v is not None}
    monitor: ProbeMonitor = instantiate(monitor_cfg, **limits)
    students = [_load_student(cfg, ckpt)]
    for seed in range(seeds):  # the random-init baselines
        with seeded(seed):
            students.append(instantiate(cfg.model.student, _convert_="all").eval())
    device = torch.device("cpu")
    train_x, train_y = monitor.features(students, "train", device)
    val_x, val_y = monitor.features(students, "val", device)
    runs = {"pretrained": [], "random_init": []}
    for seed in range(seeds):
        runs["pretrained"].append(monitor.scores((train_x[0], train_y), (val_x[0], val_y), seed=seed))
        runs["random_init"].append(monitor.scores((train_x[seed + 1], train_y), (val_x[seed + 1], val_y), seed=seed))
    out = {"seeds": seeds, "train_clips": len(train_y), "val_clips": len(val_y)}
    for name, scores in runs.items():
        out[name] = {p: {"per_seed": [s[p] for s in scores], **_summary([s[p] for s in scores])} for p in scores[0]}
    return out


def table(result: dict) -> str:
    rows = [
        f"demo encoder, frozen features: val top-1 % (mean ± std over {result['seeds']} seeds; "
        f"{result['train_clips']} train / {result['val_clips']} val clips)",
        f"{'':<13}{'k-NN':>16}{'linear probe':>16}",
    ]
    for name in ("pretrained", "random_init"):
        cells = [f"{result[name][p]['mean']:.1f} ± {result[name][p]['std']:.1f}" for p in ("knn_top1", "linear_top1")]
        rows.append(f"{name.replace('_', ' '):<13}{cells[0]:>16}{cells[1]:>16}")
    return "\n".join(rows)


def resolve_run_dir(path: str) -> Path:
    """A run folder; ``${paths.log_dir}`` (as the Makefile writes it) is resolved as train.py would."""
    if "${" not in path:
        return Path(path)
    root = Path(os.environ.setdefault("PROJECT_ROOT", str(Path.cwd())))
    paths = OmegaConf.load(root / "conf" / "paths" / "default.yaml")
    return Path(OmegaConf.create({"paths": paths, "run": path}).run)


def probe_vs_random(run: str | Path, seeds: int = 3, max_train: int | None = None, max_val: int | None = None) -> dict:
    """:func:`compare` on ``run`` (``${paths.log_dir}`` allowed), also written to ``<run>/probe_vs_random.json``."""
    run_dir = resolve_run_dir(str(run))
    result = compare(run_dir, seeds, max_train, max_val)
    (run_dir / "probe_vs_random.json").write_text(json.dumps(result, indent=1))
    return result
