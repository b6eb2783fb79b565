"""Resumable sequences of training runs (the objectives' ablation, ``surgvista-ablation``).

A :class:`Stage` is one ``train.py`` run composed from Hydra overrides and run in-process in its own folder
``<root>/<name>``. A finished stage leaves ``stage.json`` there (its metrics, wall and CPU seconds), written last
and atomically: a rerun reuses it and runs only the stages without one; an interrupted stage restarts in its own
folder, where ``ckpt_path=auto`` resumes it from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hydra import compose, initialize_config_dir, initialize_config_module
from omegaconf import DictConfig
from tqdm import tqdm

from surgvista.utils.config_dirs import primary_config_path, set_project_root
from surgvista.utils.errors import ConfigError
from surgvista.utils.io import atomic_write_text

log = logging.getLogger(__name__)

DONE = "stage.json"


@dataclass(frozen=True)
class Stage:
    """One run: ``name`` is its folder under the root (``pretrain/videomae/seed0``), ``overrides`` its config."""

    name: str
    overrides: tuple[str, ...]


def compose_stage(overrides: Sequence[str], run_dir: Path) -> DictConfig:
    """The ``train`` config of ``overrides`` with its outputs in ``run_dir`` (as ``hydra.run.dir`` would)."""
    set_project_root()
    paths = [f"paths.output_dir={run_dir}", f"paths.work_dir={run_dir}"]
    primary = primary_config_path()
    if primary.startswith("pkg://"):  # an installed wheel: the configs shipped in the package
        context = initialize_config_module(config_module=primary.removeprefix("pkg://"), version_base="1.3")
    else:
        context = initialize_config_dir(config_dir=str(Path(primary).resolve()), version_base="1.3")
    with context:
        return compose("train", overrides=[*overrides, *paths])


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stage_record(run_dir: Path) -> dict | None:
    """The ``stage.json`` of a finished stage, else ``None``."""
    done = run_dir / DONE
    return json.loads(done.read_text()) if done.is_file() else None


def run_stage(stage: Stage, root: Path) -> dict:
    """Run ``stage`` in ``root/stage.name`` unless it has finished before; returns its ``stage.json`` record."""
    run_dir = root / stage.name
    record = stage_record(run_dir)
    if record is not None:
        if record.get("overrides") != list(stage.overrides):  # another recipe: never reuse its result silently
            changed = sorted(set(stage.overrides) ^ set(record.get("overrides") or []))
            raise ConfigError(f"{run_dir / DONE}: this stage ran with other settings ({changed[:4]}); choose another "
                              "output folder (--out) for another recipe")
        return {**record, "reused": True}
    from surgvista.run import PREEMPTED, train  # Lightning (seconds to import) only when a stage runs

    cfg = compose_stage(stage.overrides, run_dir)
    wall, cpu = time.perf_counter(), cpu_seconds()
    metrics = train(cfg)
    if PREEMPTED in metrics:
        raise ConfigError(f"stage {stage.name} was preempted: run the same command again to resume it")
    record = {
        "name": stage.name,
        "overrides": list(stage.overrides),
        "metrics": metrics,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": cpu_seconds() - cpu,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(run_dir / DONE, json.dumps(record, indent=1))
    return {**record, "reused": False}


def run_stages(stages: Sequence[Stage], root: Path) -> dict[str, dict]:
    """Run every stage in order (a progress bar over the stages); ``{name: record}``."""
    records = {}
    bar = tqdm(stages, desc="stages", unit="run")
    for stage in bar:
        bar.set_postfix_str(stage.name)
        records[stage.name] = run_stage(stage, root)
        how = "reused" if records[stage.name]["reused"] else f"{records[stage.name]['wall_s']:.0f} s"
        tqdm.write(f"stage {stage.name}: done ({how})")
    return records
