"""Released layouts of image backbones (timm, torchvision, DINO/MAE/VISSL wrappers) → a library model's own keys.

A released file wraps the weights in its training framework's container and prefixes: ``{'model': ...}`` (MAE,
EndoViT), ``{'teacher': {'backbone.…'}}`` (DINO: LemonFM), ``{'state_dict': {'module.encoder_q.…'}}`` (MoCo),
``classy_state_dict.base_model.model.trunk`` with ``_feature_blocks.`` (VISSL: SelfSupSurg). :func:`select_state`
walks to the weights (``state_key``, a dotted path), :func:`rename_state` keeps, strips and drops keys, and
:func:`load_exact` loads the result strictly: a missing, unexpected or wrong-shape key is one
:class:`~surgvista.checkpoints.errors.CheckpointError` line naming the file and the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgvista.checkpoints.errors import CheckpointError
from surgvista.checkpoints.read import check_finite, read_checkpoint


def select_state(obj: Any, state_key: str | None, source: str) -> dict[str, torch.Tensor]:
    """The tensors at the dotted ``state_key`` of ``obj`` (``None``: ``obj`` itself), non-tensor entries skipped."""
    node = obj
    for part in (state_key or "").split(".") if state_key else []:
        if not isinstance(node, Mapping) or part not in node:
            keys = sorted(map(str, node))[:12] if isinstance(node, Mapping) else type(node).__name__
            raise CheckpointError(f"{source}: no entry {part!r} of state_key {state_key!r} (found {keys})")
        node = node[part]
    if not isinstance(node, Mapping):
        raise CheckpointError(f"{source}: state_key {state_key!r} holds a {type(node).__name__}, not a state dict")
    state = {str(k): v for k, v in node.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{source}: no tensors at state_key {state_key!r} (keys {sorted(map(str, node))[:12]})")
    return state


def rename_state(
    state: Mapping[str, torch.Tensor],
    keep_prefix: str | None = None,
    strip_prefixes: Sequence[str] = (),
    drop: str | None = None,
) -> dict[str, torch.Tensor]:
    """Keep only keys starting with ``keep_prefix`` (which is removed), strip each of ``strip_prefixes`` where it
    leads a key, then drop keys matching the regular expression ``drop`` (decoders, projection heads)."""
    out: dict[str, torch.Tensor] = {}
    pattern = re.compile(drop) if drop else None
    for key, value in state.items():
        if keep_prefix:
            if not key.startswith(keep_prefix):
                continue
            key = key[len(keep_prefix) :]
        for prefix in strip_prefixes:
            key = key.removeprefix(prefix)
        if pattern is None or not pattern.search(key):
            out[key] = value
    return out


def read_layout(
    path: str | Path,
    state_key: str | None = None,
    keep_prefix: str | None = None,
    strip_prefixes: Sequence[str] = (),
    drop: str | None = None,
) -> dict[str, torch.Tensor]:
    """Read a released file (``.pth``/``.pt``/``.torch``/``.safetensors``) and return its renamed, finite weights."""
    obj, _ = read_checkpoint(path)
    state = rename_state(select_state(obj, state_key, str(path)), keep_prefix, strip_prefixes, drop)
    if not state:
        raise CheckpointError(f"{path}: no key left after keep_prefix={keep_prefix!r} and drop={drop!r}")
    check_finite(state, path)
    return state


def load_exact(state: Mapping[str, torch.Tensor], model: nn.Module, source: str, what: str) -> None:
    """Load ``state`` into ``model`` with every key matched exactly; else one error line naming ``source``, the first
    offending key and how many more there are (``what`` names the model, e.g. ``timm caformer_s18``)."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in state if k in target and tuple(state[k].shape) != tuple(target[k].shape)]
    for kind, keys in (("missing key", missing), ("unexpected key", unexpected), ("wrong shape for key", wrong)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            detail = ""
            if keys is wrong:
                detail = f": checkpoint {tuple(state[keys[0]].shape)}, model {tuple(target[keys[0]].shape)}"
            raise CheckpointError(f"{source}: {kind} {keys[0]!r}{detail}{more}; expected the layout of {what}")
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
