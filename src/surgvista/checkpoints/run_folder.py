"""Run folders (``<run>/config.yaml``, ``<run>/checkpoints/*.ckpt``): a checkpoint's run and config, the check
of a run checkpoint before resuming or evaluating from it, and whose run a folder is before a run writes there."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from surgvista.checkpoints.errors import CheckpointError, RunFolderError
from surgvista.checkpoints.read import check_finite, torch_load


def run_config_file(ckpt: str | Path) -> Path | None:
    """The ``config.yaml`` of the run that wrote ``ckpt``: in ``ckpt``'s folder or the one above it, else ``None``."""
    ckpt = Path(ckpt)
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def run_config(ckpt: str | Path) -> dict[str, Any]:
    """The (unresolved) :func:`run_config_file` of ``ckpt`` as a dict; empty if there is none."""
    from omegaconf import OmegaConf

    path = run_config_file(ckpt)
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path else {}


def run_dir(ckpt: str | Path) -> Path:
    """The run folder of ``ckpt``: the folder above ``checkpoints/``, else the checkpoint's own folder."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def check_run_checkpoint(path: str | Path, model: nn.Module, key: str = "ckpt_path") -> None:
    """Before resuming or evaluating: ``path`` is a readable Lightning checkpoint with finite weights, written by
    the same kind of module as ``model`` (else one :class:`CheckpointError` naming both module classes)."""
    path = Path(path)
    if path.is_dir():  # a sharded (distributed checkpoint) folder: read by the strategy itself
        return
    if not path.is_file():
        raise FileNotFoundError(f"{key} not found: {path}")
    obj = torch_load(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
        raise CheckpointError(
            f"{path}: not a Lightning checkpoint written by train.py (no 'state_dict'); {key} resumes or evaluates "
            "a run's checkpoints/*.ckpt; to start from other weights use model.ckpt=<file>"
        )
    state = obj["state_dict"]
    check_finite(state, path)
    target = model.state_dict()
    if not target:  # built lazily from the data (TeCNO): Lightning's strict load checks it later
        return
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    theirs, ours = _module_of(path, state), type(model).__name__
    if missing or unexpected:
        example = (missing or unexpected)[0]
        other = f"but the configured model is {ours}" if theirs != ours else "configured otherwise than this run's"
        raise CheckpointError(
            f"{path}: a checkpoint of {theirs}, {other} ({len(missing)} missing and {len(unexpected)} unexpected "
            f"keys, e.g. {example!r}); use the experiment that wrote it (its config.yaml), or load its backbone "
            "with model.ckpt=<file>"
        )
    wrong = [k for k in target if tuple(target[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{path}: {k} has shape {tuple(state[k].shape)} in the checkpoint of {theirs} but "
            f"{tuple(target[k].shape)} in the configured {ours}; another task, class count or preset?"
        )


def _module_of(path: Path, state: Mapping[str, Any]) -> str:
    """The module class that wrote a run checkpoint: from the run's ``config.yaml``, else guessed from its keys."""
    cfg = run_config_file(path)
    if cfg is not None:
        from omegaconf import OmegaConf

        try:
            target = OmegaConf.select(OmegaConf.load(cfg), "model._target_")
        except Exception:
            target = None
        if target:
            return str(target).rsplit(".", 1)[-1]
    heads = sorted({k.split(".")[0] for k in state})
    if heads == ["student"]:
        return "a pre-training module (student.* weights)"
    if heads == ["net"]:
        return "a fine-tuning module (net.* weights)"
    return f"a model with weights {heads[:5]}"


def run_identity(cfg: Mapping[str, Any]) -> tuple[str, Any, str | None]:
    """What a run folder belongs to: ``("training" | "evaluation", task_name, model class name)`` of a run's
    config (a training config has the key ``train``, an evaluation config has not)."""
    model = cfg.get("model")
    target = model.get("_target_") if isinstance(model, Mapping) else None
    kind = "training" if "train" in cfg else "evaluation"
    return kind, cfg.get("task_name"), str(target).rsplit(".", 1)[-1] if target else None


def check_run_folder_owner(folder: str | Path, cfg: Mapping[str, Any]) -> None:
    """Before the run of config ``cfg`` writes into ``folder``: it is new, or holds a run of the same kind, task and
    model (its ``config.yaml`` says; resuming into one's own folder is the default), else one
    :class:`RunFolderError` naming both runs."""
    from omegaconf import OmegaConf

    path = Path(folder) / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # noqa: BLE001 - any unreadable YAML is reported with its reason
        raise RunFolderError(
            f"run folder {folder}: its config.yaml cannot be read ({type(e).__name__}); a run writes only into a new "
            "folder or one of its own earlier runs: choose another folder (hydra.run.dir=...)"
        ) from e
    theirs, ours = run_identity(saved if isinstance(saved, dict) else {}), run_identity(cfg)
    if all(t is None or t == o for t, o in zip(theirs, ours)):
        return
    raise RunFolderError(
        f"run folder {folder} holds a {theirs[0]} run of task_name={theirs[1]!r} with model {theirs[2]}, not this "
        f"{ours[0]} run of task_name={ours[1]!r} with model {ours[2]}; nothing was written: choose another folder "
        "(hydra.run.dir=...), or resume that run with the experiment that wrote it"
    )
