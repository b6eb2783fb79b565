"""V-JEPA 2.1 torch.hub ``.pt`` encoders in our RoPE student's key names.

Released layout (facebookresearch/vjepa2 at 16de6c8 / be434e4: ``src/hub/backbones.py``,
``app/vjepa_2_1/models/vision_transformer.py``, ``app/vjepa_2_1/train.py``): a dict of state dicts whose keys carry
``module.`` and ``backbone.`` prefixes. The distilled ViT-B/L files are read from ``ema_encoder``, the ViT-g/G ones
from ``target_encoder`` (beside ``encoder`` and ``predictor``). An encoder holds

* ``patch_embed.proj`` (Conv3d tubelet 2, for clips) and ``patch_embed_img.proj`` (Conv3d tubelet 1, for single
  frames: a clip of one frame takes this path);
* ``video_mod_embed`` / ``img_mod_embed`` ``(1, 1, D)``, added to every token after the patch embedding of that
  modality;
* ``blocks.{i}`` as in V-JEPA 2 (fused qkv bias, GELU MLP) but with V-JEPA 2.1's RoPE
  (:mod:`surgvista.layers.rope`, ``variant="vjepa21"``);
* ``norms_block.{0..3}``: LayerNorms of the four hierarchical outputs (blocks :data:`HIERARCHICAL_LAYERS`); the
  encoder's output (what its frozen evaluation reads) is the last block's tokens through ``norms_block.3``. There
  is no ``norm``.

Into our student: ``patch_embed.proj`` is the embedding of the modality (video, or image for a one-frame
tubelet-1 model) with its modality embedding folded into the bias (a constant added to every token equals a bias),
``norm`` is the last of ``norms_block``; the other modality's embedding and the hierarchical norms before the last
are not loaded and are named in the notes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from surgvista.checkpoints.errors import CheckpointError
from surgvista.checkpoints.keys import strip_wrappers

# Encoder modules of V-JEPA 2.1 that V-JEPA 2 has not.
VJEPA21_ONLY = ("norms_block.", "patch_embed_img.", "img_mod_embed", "video_mod_embed")
VJEPA21_ENCODER_KEY = re.compile(
    r"(patch_embed|patch_embed_img)\.proj\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
    r"|norms_block\.\d+\.(weight|bias)"
    r"|(img|video)_mod_embed"
)
# Blocks whose outputs norms_block.{0..3} normalise, by depth (the released ViT-B, L, g, G).
HIERARCHICAL_LAYERS = {12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 40: (9, 19, 29, 39), 48: (11, 23, 37, 47)}
# The state dict each encoder part reads, in order of preference.
PART_KEYS = {"target": ("ema_encoder", "target_encoder"), "student": ("encoder",)}


def is_vjepa21(obj: Any) -> bool:
    """A V-JEPA 2.1 file: an ``ema_encoder`` state dict, or an encoder with 2.1-only modules."""
    if not isinstance(obj, Mapping):
        return False
    if isinstance(obj.get("ema_encoder"), Mapping):
        return True
    states = [obj.get(k) for k in ("encoder", "target_encoder")]
    return any(strip_wrappers(str(k)).startswith(VJEPA21_ONLY) for s in states if isinstance(s, Mapping) for k in s)


def state_key(obj: Mapping, part: str | None, name: str) -> str:
    """Which state dict of a 2.1 file ``part`` reads (``target``: ``ema_encoder`` else ``target_encoder``)."""
    wanted = PART_KEYS[part or "target"]
    for key in wanted:
        if isinstance(obj.get(key), Mapping):
            return key
    have = [k for k in (*PART_KEYS["target"], *PART_KEYS["student"]) if isinstance(obj.get(k), Mapping)]
    raise CheckpointError(f"{name}: no {' or '.join(wanted)} state dict in this V-JEPA 2.1 file (it has {have})")


def vjepa21_encoder(
    state: Mapping[str, Any], name: str, image: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A 2.1 encoder state dict (wrapper prefixes allowed) as our RoPE student's, and notes naming what was left out.

    ``image``: take the single-frame path (``patch_embed_img`` + ``img_mod_embed``) for a tubelet-1 model. A key
    outside the layout, or a missing patch embedding or norm, is a one-line :class:`CheckpointError` naming it.
    """
    src = {strip_wrappers(str(k)): v for k, v in state.items()}
    bad = [k for k, v in src.items() if not (isinstance(v, torch.Tensor) and VJEPA21_ENCODER_KEY.fullmatch(k))]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointError(f"{name}: key(s) with no place in the V-JEPA 2.1 encoder layout: {bad[:5]}{more}")
    embed, mod = ("patch_embed_img", "img_mod_embed") if image else ("patch_embed", "video_mod_embed")
    norms = sorted({int(k.split(".")[1]) for k in src if k.startswith("norms_block.")})
    last = f"norms_block.{norms[-1]}" if norms else "norms_block"
    for need in (f"{embed}.proj.weight", f"{embed}.proj.bias", f"{last}.weight", f"{last}.bias"):
        if need not in src:
            raise CheckpointError(f"{name}: V-JEPA 2.1 encoder without {need} (needed on this path)")
    ours = {k: v for k, v in src.items() if k.startswith("blocks.")}
    ours["patch_embed.proj.weight"] = src[f"{embed}.proj.weight"]
    ours["patch_embed.proj.bias"] = _fold(src[f"{embed}.proj.bias"], src.get(mod), name, mod)
    ours["norm.weight"], ours["norm.bias"] = src[f"{last}.weight"], src[f"{last}.bias"]
    used = {*ours, f"{embed}.proj.weight", f"{embed}.proj.bias", mod, f"{last}.weight", f"{last}.bias"}
    left = sorted({re.sub(r"\.(weight|bias)$", "", k) for k in src if k not in used})
    which = "single-frame (patch_embed_img, img_mod_embed)" if image else "video (patch_embed, video_mod_embed)"
    return ours, [
        f"V-JEPA 2.1 encoder: {which} embedding with its modality embedding folded into the bias; "
        f"{last} as the final norm; not loaded (not on this path): {left}"
    ]


def _fold(bias: torch.Tensor, mod: Any, name: str, key: str) -> torch.Tensor:
    """The patch embedding's bias plus the modality embedding (``None``: a file without modality embeddings)."""
    if mod is None:
        return bias
    if mod.numel() != bias.numel():
        raise CheckpointError(f"{name}: {key} has {mod.numel()} values for a width of {bias.numel()}")
    return bias.float() + mod.float().reshape(-1)
