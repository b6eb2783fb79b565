"""A fine-tuned phase checkpoint as plain ``nn.Module``s plus the sampling its run used (docs/streaming.md).

The Lightning module is not needed: the run's ``config.yaml`` (found by
:func:`~surgvista.checkpoints.run_folder.run_config_file`) gives the network's arguments and the clip geometry,
the checkpoint's ``state_dict`` (``net.`` prefix stripped) the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgvista.checkpoints.read import torch_load
from surgvista.checkpoints.run_folder import run_config_file
from surgvista.models.classifier import VideoClassifier
from surgvista.models.mstcn import MSTCN
from surgvista.utils.errors import UserError

CLIP_MODULES = ("surgvista.modules.finetune.PhaseModule",)
TECNO_MODULES = ("surgvista.modules.tecno.TeCNOModule",)


class NotAPhaseModelError(UserError, ValueError):
    """A checkpoint that is not a fine-tuned phase model (or whose run folder is missing)."""


@dataclass
class PhaseModel:
    """What a stream needs of a checkpoint: the network(s), the clip geometry, the frame rate and the names."""

    family: str  # "clip" (online causal clip classifier, frame-level models included) | "tecno"
    net: nn.Module
    label_names: list[str]
    fps: float
    num_frames: int = 1
    sampling_rate: int = 1
    input_size: int = 224
    eval_views: list[str] = field(default_factory=lambda: ["squash"])
    backend: str = "decord"
    config: dict[str, Any] = field(default_factory=dict)


def _load_config(checkpoint: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = run_config_file(checkpoint)
    if path is None:
        raise NotAPhaseModelError(
            f"{checkpoint}: no config.yaml in its folder or the one above; a stream needs the checkpoint of a "
            "fine-tuning run (train.py experiment=<phase experiment>)"
        )
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def _state_dict(checkpoint: Path, state: Any, prefix: str) -> dict[str, torch.Tensor]:
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise NotAPhaseModelError(f"{checkpoint}: not a Lightning checkpoint (no 'state_dict')")
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def clip_phase_model(cfg: dict[str, Any], net: VideoClassifier, names: list[str]) -> PhaseModel:
    """The clip classifier ``net`` with the fps, clip geometry, views and backend of its run config ``cfg``."""
    data = cfg.get("data", {})
    return PhaseModel(
        family="clip",
        net=net.eval(),
        label_names=names,
        fps=float(cfg["model"].get("fps", 1.0)),
        num_frames=int(data.get("num_frames", net.num_frames)),
        sampling_rate=int(data.get("sampling_rate", 1)),
        input_size=int(data.get("input_size", net.img_size)),
        eval_views=list(data.get("eval_views", ["squash"])),
        backend=str(data.get("backend", "decord")),
        config=cfg,
    )


def _clip_model(checkpoint: Path, state: Any, cfg: dict[str, Any], names: list[str]) -> PhaseModel:
    net_args = {k: v for k, v in cfg["model"]["net"].items() if k != "_target_"}
    net = VideoClassifier(**net_args)
    net.load_state_dict(_state_dict(checkpoint, state, "net."))
    return clip_phase_model(cfg, net, names)


def _tecno_model(checkpoint: Path, state: Any, cfg: dict[str, Any], names: list[str]) -> PhaseModel:
    hp = cfg["model"]
    weights = _state_dict(checkpoint, state, "net.")
    input_dim = int(weights["stages.0.conv_1x1.weight"].shape[1])
    net = MSTCN(input_dim, hp["num_classes"], hp["num_stages"], hp["num_layers"], hp["num_f_maps"], 0.0, hp["causal"])
    net.load_state_dict(weights)
    return PhaseModel("tecno", net.eval(), names, float(hp.get("fps", 1.0)), config=cfg)


def load_phase_model(checkpoint: str | Path) -> PhaseModel:
    """The phase model of a run checkpoint; :class:`NotAPhaseModelError` (one line) for anything else."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise NotAPhaseModelError(f"{checkpoint}: no such checkpoint file")
    cfg = _load_config(checkpoint)
    target = str((cfg.get("model") or {}).get("_target_", ""))
    if target not in CLIP_MODULES + TECNO_MODULES:
        raise NotAPhaseModelError(
            f"{checkpoint}: model._target_ is {target or 'missing'!r}; expected a phase model "
            f"({', '.join(CLIP_MODULES + TECNO_MODULES)})"
        )
    state = torch_load(checkpoint)
    if not isinstance(state, dict):
        raise NotAPhaseModelError(f"{checkpoint}: not a Lightning checkpoint")
    num_classes = int((cfg["model"].get("net") or cfg["model"]).get("num_classes", 0))
    names = list(state.get("class_names") or [str(k) for k in range(num_classes)])
    build = _clip_model if target in CLIP_MODULES else _tecno_model
    return build(checkpoint, state, cfg, names)
