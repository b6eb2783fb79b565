"""The data geometry of an evaluation against the one its checkpoint was trained with.

The geometry is what shapes a clip: frames per clip, their stride in manifest frames, the input size, the
normalisation and, for cached features, the extractor's clip. ``eval.py`` compares the composed config with the
training run's ``config.yaml`` (:func:`~surgvista.checkpoints.run_folder.run_config_file`; without one, the data
module's hyper-parameters saved in the checkpoint) and refuses a difference unless ``allow_geometry_change=true``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from surgvista.checkpoints.errors import CheckpointError
from surgvista.checkpoints.read import torch_load
from surgvista.checkpoints.run_folder import run_config_file

log = logging.getLogger(__name__)

# Keys under ``data`` that change what a clip looks like (compared only where both configs have them).
GEOMETRY_KEYS = (
    "num_frames", "sampling_rate", "input_size", "mean", "std",
    "extractor.input", "extractor.clip_len", "extractor.clip_stride", "extractor.input_size", "extractor.frame_stride",
)
OVERRIDE = "allow_geometry_change"
_ABSENT = object()


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _select(data: Any, key: str) -> Any:
    """``data[key]`` for a dotted ``key`` of a mapping or an OmegaConf node (interpolations resolved)."""
    node = data
    for part in key.split("."):
        try:
            if not isinstance(node, (Mapping, DictConfig)) or part not in node:
                return _ABSENT
            node = node[part]
        except OmegaConfBaseException:  # an interpolation that cannot be resolved here: not compared
            return _ABSENT
    return _plain(node)


def data_geometry(data: Mapping | DictConfig | None) -> dict[str, Any]:
    """``{data.<key>: value}`` of the :data:`GEOMETRY_KEYS` that ``data`` (a ``data`` config node) sets."""
    if data is None:
        return {}
    values = {f"data.{k}": _select(data, k) for k in GEOMETRY_KEYS}
    return {k: v for k, v in values.items() if v is not _ABSENT}


def _load_config(path: Path) -> DictConfig | None:
    """The run's ``config.yaml``, or ``None`` (logged) when it is not a readable YAML mapping."""
    try:
        run = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - a damaged config.yaml only means there is nothing to compare
        log.warning("%s is not readable (%s): the data geometry is not compared", path, str(e).splitlines()[0])
        return None
    return run if isinstance(run, DictConfig) else None


def trained_geometry(ckpt: str | Path) -> tuple[dict[str, Any], str]:
    """The geometry ``ckpt`` was trained with and where it was read: the run's ``config.yaml``, else the checkpoint's
    ``datamodule_hyper_parameters``; ``({}, "")`` when neither is there."""
    path = run_config_file(ckpt)
    if path is not None:
        run = _load_config(path)
        return (data_geometry(run.get("data")), str(path)) if run is not None else ({}, "")
    ckpt = Path(ckpt)
    if ckpt.is_file():
        obj = torch_load(ckpt)
        hparams = obj.get("datamodule_hyper_parameters") if isinstance(obj, Mapping) else None
        if isinstance(hparams, Mapping):
            return data_geometry(hparams), f"{ckpt} (datamodule_hyper_parameters)"
    return {}, ""


def _same_module(ckpt: str | Path, cfg: DictConfig) -> bool:
    """False when the run's ``config.yaml`` names another ``model._target_`` than ``cfg`` (unknown: True)."""
    run = _load_config(path) if (path := run_config_file(ckpt)) else None
    theirs = OmegaConf.select(run, "model._target_", default=None) if run is not None else None
    ours = OmegaConf.select(cfg, "model._target_", default=None)
    return theirs is None or ours is None or theirs == ours


def check_geometry(ckpt: str | Path, cfg: DictConfig, allow: bool = False) -> dict[str, Any]:
    """Compare ``cfg.data`` with the geometry ``ckpt`` was trained with; raise one :class:`CheckpointError` naming
    every differing key with both values unless ``allow``. Returns the record ``eval.py`` writes to
    ``geometry.json``."""
    used = data_geometry(cfg.get("data"))
    trained, source = trained_geometry(ckpt)
    if not _same_module(ckpt, cfg):  # another task's run: the module check names the real culprit
        trained = {}
    changed = {k: {"eval": used[k], "trained": trained[k]} for k in used if k in trained and used[k] != trained[k]}
    record = {"checkpoint": str(ckpt), "trained_config": source or None, "geometry": used, "trained": trained,
              "changed": changed, OVERRIDE: bool(allow)}
    if not source:
        log.info("no config.yaml beside %s and no data hyper-parameters in it: the data geometry is not compared", ckpt)
    if not changed:
        return record
    listing = ", ".join(f"{k}={v['eval']!r} (trained with {v['trained']!r})" for k, v in changed.items())
    if not allow:
        raise CheckpointError(
            f"{ckpt}: evaluation data geometry differs from its training run ({source}): {listing}; evaluate with "
            f"the training values, or add {OVERRIDE}=true if the change is intended"
        )
    log.warning("%s=true: evaluating %s with a changed data geometry: %s", OVERRIDE, ckpt, listing)
    return record
