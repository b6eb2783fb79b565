"""Which encoder to load from a checkpoint that holds more than one, and V-JEPA 2 files in our key names.

Three V-JEPA sources hold a RoPE encoder for :func:`~surgvista.checkpoints.load.load_backbone`:

* our V-JEPA pre-training run (a Lightning ``.ckpt`` with ``student.*``, ``latent.target.*``, ``latent.predictor.*``);
* an official V-JEPA 2 ``.pt`` (facebookresearch/vjepa2 ``app/vjepa/train.py`` ``save_checkpoint``: ``encoder``,
  ``target_encoder``, ``predictor`` state dicts with ``module.backbone.`` prefixes);
* a ``transformers`` ``VJEPA2Model`` folder (one encoder: the released folders carry the target encoder);
* an official V-JEPA 2.1 ``.pt`` (``ema_encoder`` or ``target_encoder``, per-depth ``norms_block``, modality
  embeddings): mapped by :mod:`surgvista.checkpoints.vjepa21`; it needs a model with ``rope_variant="vjepa21"``.

``part`` picks the encoder: ``"target"`` (the EMA target encoder, the default: V-JEPA evaluates it and the
released models carry it) or ``"student"`` (the context encoder; ``encoder`` in the official files). Where a
checkpoint holds one encoder ``part`` has nothing to choose and is noted, not refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from surgvista.checkpoints.errors import CheckpointError
from surgvista.checkpoints.keys import VJEPA_HF_HEAD_PREFIXES, strip_wrappers, vjepa_from_hf
from surgvista.checkpoints.read import StateSource, check_finite, read_checkpoint, unwrap
from surgvista.checkpoints.vjepa21 import PART_KEYS, is_vjepa21, state_key, vjepa21_encoder

ENCODER_PARTS = ("target", "student")
# The official file's state dict for each part, and the Lightning prefix of our V-JEPA runs.
PT_PARTS = {"target": "target_encoder", "student": "encoder"}
RUN_PREFIXES = {"target": "latent.target.", "student": "student."}
RUN_PREDICTOR = "latent.predictor."


class EncoderSource(NamedTuple):
    """A checkpoint read by :func:`read_encoder`: the chosen encoder, its key style and position kind if known."""

    src: StateSource
    style: str | None  # None: detect from the keys
    pos_kind: str | None  # "rope" for a V-JEPA encoder; None: read off the file
    notes: list[str]
    rope_variant: str | None = None  # the RoPE the file's encoder was trained with (None: not known from the file)


def check_part(part: str | None) -> str | None:
    """Validate ``part`` (``None``: the default, the target encoder where there is one)."""
    if part is not None and part not in ENCODER_PARTS:
        raise ValueError(f"unknown encoder part {part!r}; expected one of {ENCODER_PARTS} (or null)")
    return part


def is_vjepa_pt(obj: Any) -> bool:
    """An official V-JEPA 2 file: a mapping with ``encoder`` or ``target_encoder`` state dicts (not a run)."""
    if not isinstance(obj, Mapping) or "state_dict" in obj:
        return False
    return any(isinstance(obj.get(p), Mapping) for p in (*PT_PARTS.values(), "ema_encoder"))


def is_vjepa_run(obj: Any) -> bool:
    """A Lightning checkpoint of a V-JEPA objective (its state dict holds ``latent.target.*``)."""
    sd = obj.get("state_dict") if isinstance(obj, Mapping) else None
    return isinstance(sd, Mapping) and any(str(k).startswith(RUN_PREFIXES["target"]) for k in sd)


def read_encoder(
    source: str | Path | Mapping[str, Any], part: str | None = None, tubelet: int | None = None
) -> EncoderSource:
    """Read ``source`` and take out one encoder's state dict (see the module docstring); any other checkpoint is
    unwrapped as :func:`~surgvista.checkpoints.read.read_state` does. Non-finite weights are refused.
    ``tubelet``: the model's tubelet size; 1 takes a V-JEPA 2.1 file's single-frame patch embedding."""
    check_part(part)
    if isinstance(source, (str, Path)):
        name = str(source)
        obj, meta = read_checkpoint(source)
    else:
        name, obj, meta = "<mapping>", source, {}
    if (meta.get("hf_config") or {}).get("model_type") == "vjepa2":
        found = _hf_encoder(name, obj, meta, part)
    elif is_vjepa21(obj):
        found = _pt21_encoder(name, obj, meta, part, tubelet == 1)
    elif is_vjepa_pt(obj):
        found = _pt_encoder(name, obj, meta, part)
    elif is_vjepa_run(obj):
        found = _run_encoder(name, obj, meta, part)
    else:
        state, container, extra = unwrap(obj, name)
        notes = [f"ckpt_part={part!r} ignored: the checkpoint holds one encoder"] if part else []
        found = EncoderSource(StateSource(name, state, container, extra, meta, obj), None, None, notes)
    check_finite(found.src.state, name)
    return found


def _hf_encoder(name: str, obj: Any, meta: dict, part: str | None) -> EncoderSource:
    """The encoder of a ``VJEPA2Model`` (or ``VJEPA2ForVideoClassification``) folder, in our names."""
    state = {k: v for k, v in obj.items() if not k.removeprefix("vjepa2.").startswith(VJEPA_HF_HEAD_PREFIXES)}
    encoder, predictor, unmapped = vjepa_from_hf(state)
    if unmapped or not encoder:
        raise CheckpointError(f"{name}: keys with no place in a VJEPA2Model: {unmapped[:5] or 'no encoder keys'}")
    notes = [f"HF VJEPA2Model folder: its one encoder loaded, {len(predictor)} predictor tensors not loaded"]
    if part == "student":
        notes.append("ckpt_part='student' ignored: an HF VJEPA2Model folder holds one encoder")
    meta = {k: v for k, v in meta.items() if k != "hf_config"} | {"vjepa2_config": meta["hf_config"]}
    return EncoderSource(StateSource(name, encoder, "hf_dir", {}, meta, obj), "surgvista", "rope", notes, "vjepa2")


def _pt_encoder(name: str, obj: Mapping, meta: dict, part: str | None) -> EncoderSource:
    """``target_encoder`` (default) or ``encoder`` of an official V-JEPA 2 file, wrapper prefixes removed."""
    key = PT_PARTS[part or "target"]
    if not isinstance(obj.get(key), Mapping):
        have = [p for p, k in PT_PARTS.items() if isinstance(obj.get(k), Mapping)]
        raise CheckpointError(f"{name}: no {key!r} state dict in this V-JEPA 2 file; set ckpt_part to one of {have}")
    state = {strip_wrappers(k): v for k, v in obj[key].items() if isinstance(v, torch.Tensor)}
    others = [k for k in ("encoder", "target_encoder", "predictor") if k != key and isinstance(obj.get(k), Mapping)]
    notes = [f"V-JEPA 2 file: {key!r} loaded; not loaded: {others}"]
    src = StateSource(name, state, f"vjepa_pt:{key}", {}, meta, obj)
    return EncoderSource(src, "surgvista", "rope", notes, "vjepa2")


def _pt21_encoder(name: str, obj: Mapping, meta: dict, part: str | None, image: bool) -> EncoderSource:
    """``ema_encoder``/``target_encoder`` (default) or ``encoder`` of a V-JEPA 2.1 file, in our names."""
    key = state_key(obj, part, name)
    state, notes = vjepa21_encoder(obj[key], f"{name} [{key}]", image)
    others = [k for k in (*PART_KEYS["target"], "encoder", "predictor") if k != key and isinstance(obj.get(k), Mapping)]
    notes = [f"V-JEPA 2.1 file: {key!r} loaded; not loaded: {others}", *notes]
    src = StateSource(name, state, f"vjepa21_pt:{key}", {}, meta, obj)
    return EncoderSource(src, "surgvista", "rope", notes, "vjepa21")


def _run_encoder(name: str, obj: Mapping, meta: dict, part: str | None) -> EncoderSource:
    """``latent.target.*`` (default) or ``student.*`` of our V-JEPA run; a run without a position table is RoPE."""
    sd = obj["state_dict"]
    prefix = RUN_PREFIXES[part or "target"]
    state = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{name}: no {prefix}* weights in this V-JEPA run checkpoint")
    keys = ("hyper_parameters", "datamodule_hyper_parameters", "epoch", "global_step")
    extra = {k: obj[k] for k in keys if k in obj}
    others = [p for p in (*RUN_PREFIXES.values(), RUN_PREDICTOR) if p != prefix]
    skipped = [f"{p}*" for p in others if any(k.startswith(p) for k in sd)]
    which = "student" if part == "student" else "EMA target"
    notes = [f"V-JEPA run: {prefix}* loaded (the {which} encoder); not loaded: {skipped}"]
    pos_kind = None if "pos_embed" in state else "rope"
    return EncoderSource(StateSource(name, state, f"lightning:{prefix}", extra, meta, obj), None, pos_kind, notes)
