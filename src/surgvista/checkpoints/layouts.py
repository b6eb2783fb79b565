"""Released layouts of backbones (timm, torchvision, DINO/MAE/VISSL wrappers; the zoo's Endo-FM and InternVideo2
video ViTs) → a library model's own keys.

A released file wraps the weights in its training framework's container and prefixes: ``{'model': ...}`` (MAE,
EndoViT), ``{'teacher': {'backbone.…'}}`` (DINO: LemonFM), ``{'state_dict': {'module.encoder_q.…'}}`` (MoCo),
``classy_state_dict.base_model.model.trunk`` with ``_feature_blocks.`` (VISSL: SelfSupSurg), a wrapper's
``evit.<i>`` around Microsoft's EfficientViT (GSViT). A :class:`Layout` walks to the weights (``state_key``, a dotted
path, via :func:`select_state`) and renames, keeps and drops keys; :func:`load_exact` loads the result strictly:
a missing, unexpected or wrong-shape key is one :class:`~surgvista.checkpoints.errors.CheckpointError` line naming
the file and the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgvista.checkpoints.errors import CheckpointError
from surgvista.checkpoints.read import check_finite, read_checkpoint
from surgvista.utils.errors import ConfigError


def select_state(obj: Any, state_key: str | None, source: str) -> dict[str, torch.Tensor]:
    """The tensors at the dotted ``state_key`` of ``obj`` (``None``: ``obj`` itself), non-tensor entries skipped.

    ``state_key`` may list alternatives, ``'model|module|'``: the first whose top-level entry ``obj`` holds (an
    empty alternative: ``obj`` itself), as the release's own loaders try ``model``, then ``module``, then the file.
    """
    if state_key and "|" in state_key:
        options = state_key.split("|")
        found = [o for o in options if not o or (isinstance(obj, Mapping) and o.split(".")[0] in obj)]
        if not found:
            keys = sorted(map(str, obj))[:12] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{source}: none of the entries {options} of state_key {state_key!r} (found {keys})")
        state_key = found[0] or None
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


def msra_efficientvit_key(key: str) -> str:
    """A key of Microsoft's original EfficientViT (``patch_embed.<i>``, ``blocks1``–``blocks3`` with each later
    stage's subsample ``Sequential``/``PatchMerging``/``Sequential`` first, ``Conv2d_BN`` as ``c``/``bn``) → timm's
    ``efficientvit_m*`` key (``patch_embed.conv<n>``, ``stages.<s>.downsample.res1/patchmerge/res2``,
    ``stages.<s>.blocks.<j>``, ``conv``/``bn``)."""
    key = re.sub(r"\.c\.weight$", ".conv.weight", key)
    m = re.match(r"patch_embed\.(\d+)\.(.*)$", key)
    if m:
        return f"patch_embed.conv{int(m[1]) // 2 + 1}.{m[2]}"
    m = re.match(r"blocks([123])\.(\d+)\.(.*)$", key)
    if not m:
        return key
    stage, index, rest = int(m[1]) - 1, int(m[2]), m[3]
    if stage == 0:
        return f"stages.0.blocks.{index}.{rest}"
    if index < 3:
        return f"stages.{stage}.downsample.{('res1', 'patchmerge', 'res2')[index]}.{rest}"
    return f"stages.{stage}.blocks.{index - 3}.{rest}"


# Named key renamings a layout can apply (``key_map``), for layouts no prefix rule describes.
KEY_MAPS = {"efficientvit_msra": msra_efficientvit_key}


@dataclass(frozen=True)
class Layout:
    """Where a released file keeps the weights and how its keys become the library model's.

    ``state_key``: dotted path to the state dict (``None``: the file's top level); ``keep_prefix``: only keys under
    it, prefix removed; ``strip_prefixes``: removed where they lead a key; ``prefix_map``: leading prefix →
    replacement; ``key_map``: a name of :data:`KEY_MAPS`; ``drop``: regular expression of keys to drop (decoders,
    projection heads, stored index buffers). Applied in that order."""

    state_key: str | None = None
    keep_prefix: str | None = None
    strip_prefixes: tuple[str, ...] = ()
    prefix_map: Mapping[str, str] = field(default_factory=dict)
    key_map: str | None = None
    drop: str | None = None

    def __post_init__(self) -> None:
        if self.key_map is not None and self.key_map not in KEY_MAPS:
            raise ConfigError(f"unknown key_map {self.key_map!r}; expected one of {sorted(KEY_MAPS)}")

    def rename_key(self, key: str) -> str:
        """One key after the prefix rules and the key map (the ``keep_prefix`` test is the caller's)."""
        key = key.removeprefix(self.keep_prefix or "")
        for prefix in self.strip_prefixes:
            key = key.removeprefix(prefix)
        for old, new in self.prefix_map.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        return KEY_MAPS[self.key_map](key) if self.key_map else key

    def rename(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict under the library model's keys (dropped keys left out)."""
        pattern = re.compile(self.drop) if self.drop else None
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if self.keep_prefix and not key.startswith(self.keep_prefix):
                continue
            key = self.rename_key(key)
            if pattern is None or not pattern.search(key):
                out[key] = value
        return out

    def read(self, path: str | Path) -> dict[str, torch.Tensor]:
        """Read a released file (``.pth``/``.pt``/``.pkl``/``.torch``/``.safetensors``): its renamed, finite weights."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"backbone checkpoint not found: {path} (backbone.ckpt)")
        obj, _ = read_checkpoint(path)
        state = self.rename(select_state(obj, self.state_key, str(path)))
        if not state:
            raise CheckpointError(f"{path}: no key left after keep_prefix={self.keep_prefix!r} and drop={self.drop!r}")
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
