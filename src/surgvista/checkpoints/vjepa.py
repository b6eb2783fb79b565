"""V-JEPA 2 checkpoints: read the official ``.pt`` files and ``transformers`` ``VJEPA2Model`` folders, load them into
our RoPE student and :class:`~surgvista.models.predictor.Predictor`, and export those as a ``VJEPA2Model`` folder.

Official layout (facebookresearch/vjepa2, ``app/vjepa/train.py`` ``save_checkpoint``): a dict with ``encoder``,
``predictor`` and ``target_encoder`` state dicts (and ``opt``, ``scaler``, ``epoch``, ...), their keys prefixed by
``module.`` (DDP) and ``backbone.`` (the multi-mask wrapper). Without those prefixes the keys are ours. Our own
``model=vjepa`` runs (Lightning ``.ckpt``: ``student.*``, ``latent.target.*``, ``latent.predictor.*``) read the same
way, as ``encoder``, ``target_encoder`` and ``predictor``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from surgvista.checkpoints.errors import CheckpointError, ExportError
from surgvista.checkpoints.keys import (
    VJEPA_ENCODER_KEY,
    VJEPA_HF_HEAD_PREFIXES,
    VJEPA_PREDICTOR_KEY,
    block_depth,
    strip_wrappers,
    vjepa_from_hf,
    vjepa_to_hf,
)
from surgvista.checkpoints.load import LoadReport, load_matching
from surgvista.checkpoints.parts import PT_PARTS, RUN_PREDICTOR, RUN_PREFIXES, is_vjepa_run
from surgvista.checkpoints.read import check_finite, read_checkpoint, torch_load
from surgvista.checkpoints.vjepa21 import is_vjepa21
from surgvista.utils.io import atomic_write_dir
from surgvista.utils.owned_files import EXPORT, check_replaceable_folder, record_written

PARTS = ("encoder", "target_encoder", "predictor")
# Heads by width where the file cannot say (no config): the released ViT-L, ViT-H, ViT-g and their predictor.
KNOWN_HEADS = {1024: 16, 1280: 16, 1408: 22}
KNOWN_PRED_HEADS = {384: 12}
HF_HEAD_PREFIXES = VJEPA_HF_HEAD_PREFIXES  # VJEPA2ForVideoClassification's head: skipped when reading


class VJEPAArch(NamedTuple):
    """Architecture of a V-JEPA 2 checkpoint (predictor fields ``None`` without a predictor)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_size: int
    tubelet_size: int
    img_size: int | None
    num_frames: int | None
    ln_eps: float = 1e-6
    pred_dim: int | None = None
    pred_depth: int | None = None
    pred_heads: int | None = None
    pred_mlp_ratio: float | None = None
    num_mask_tokens: int | None = None

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """``(T', H', W')``; needs ``img_size`` and ``num_frames`` (a config.json, or given to :func:`read_vjepa`)."""
        if self.img_size is None or self.num_frames is None:
            raise CheckpointError("clip size unknown (no config.json): pass img_size= and num_frames= to read_vjepa")
        side = self.img_size // self.patch_size
        return (self.num_frames // self.tubelet_size, side, side)

    def student_kwargs(self) -> dict[str, Any]:
        """Arguments of the matching encoder-only RoPE ``SurgVISTAStudent``."""
        _ = self.token_grid  # refuses an unknown clip size
        names = ("img_size", "num_frames", "patch_size", "tubelet_size", "embed_dim", "depth", "num_heads")
        return {
            **{n: getattr(self, n) for n in names},
            "mlp_ratio": self.mlp_ratio,
            "ln_eps": self.ln_eps,
            "pos_embed": "rope",
            "qkv_bias": "fused",
            "image_decoder": False,
            "pixel_decoder": False,
        }

    def predictor_kwargs(self) -> dict[str, Any]:
        """Arguments of the matching :class:`~surgvista.models.predictor.Predictor`."""
        if self.pred_dim is None:
            raise CheckpointError("the checkpoint has no predictor")
        return {
            "embed_dim": self.embed_dim,
            "token_grid": self.token_grid,
            "pred_dim": self.pred_dim,
            "depth": self.pred_depth,
            "num_heads": self.pred_heads,
            "mlp_ratio": self.pred_mlp_ratio,
            "num_mask_tokens": self.num_mask_tokens,
            "ln_eps": self.ln_eps,
        }


class VJEPAWeights(NamedTuple):
    """A V-JEPA 2 checkpoint read by :func:`read_vjepa`: state dicts in our names (``None`` where absent)."""

    encoder: dict[str, torch.Tensor] | None
    target_encoder: dict[str, torch.Tensor] | None
    predictor: dict[str, torch.Tensor] | None
    arch: VJEPAArch
    source: str


def read_vjepa(
    path: str | Path,
    *,
    num_heads: int | None = None,
    pred_heads: int | None = None,
    img_size: int | None = None,
    num_frames: int | None = None,
) -> VJEPAWeights:
    """Read an official V-JEPA 2 ``.pt`` (``encoder``/``target_encoder``/``predictor``) or a ``VJEPA2Model`` folder
    (``config.json`` + ``model.safetensors``; its one encoder is returned as ``encoder``).

    The architecture comes from ``config.json``, else from the tensor shapes (heads: ``num_heads``/``pred_heads``,
    else :data:`KNOWN_HEADS`, else width/64 and width/32; clip size: ``img_size``/``num_frames``). A key with no
    place in the layout, or a non-finite tensor, is a one-line :class:`CheckpointError` naming the file and keys.
    """
    path = Path(path)
    parts, config = _read_hf_folder(path) if path.is_dir() else (_read_hub_file(path), {})
    for part, state in parts.items():
        if state is not None:
            check_finite(state, f"{path} [{part}]")
    given = {"num_heads": num_heads, "pred_heads": pred_heads, "img_size": img_size, "num_frames": num_frames}
    arch = _infer_arch(parts, config, str(path), given)
    return VJEPAWeights(parts["encoder"], parts["target_encoder"], parts["predictor"], arch, str(path))


def _bad_keys(path: Path, part: str, bad: list[str]) -> CheckpointError:
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return CheckpointError(f"{path}: {part} key(s) with no place in the V-JEPA 2 layout: {bad[:5]}{more}")


def _read_hf_folder(path: Path) -> tuple[dict[str, dict | None], dict[str, Any]]:
    """Our-name state dicts and ``config.json`` of a ``VJEPA2Model`` (or ``VJEPA2ForVideoClassification``) folder."""
    state, meta = read_checkpoint(path)
    config = meta.get("hf_config") or {}
    if config.get("model_type") != "vjepa2":
        raise CheckpointError(
            f"{path}: config.json model_type is {config.get('model_type')!r}; expected 'vjepa2' (a VJEPA2Model folder)"
        )
    state = {k: v for k, v in state.items() if not k.removeprefix("vjepa2.").startswith(HF_HEAD_PREFIXES)}
    encoder, predictor, unmapped = vjepa_from_hf(state)
    if unmapped:
        raise _bad_keys(path, "Hugging Face", unmapped)
    return {"encoder": encoder or None, "target_encoder": None, "predictor": predictor or None}, config


def _read_hub_file(path: Path) -> dict[str, dict | None]:
    """The ``encoder``/``target_encoder``/``predictor`` state dicts of an official ``.pt`` (or of our V-JEPA run's
    ``.ckpt``), wrappers removed."""
    obj = torch_load(path)
    if is_vjepa21(obj):
        raise CheckpointError(
            f"{path}: a V-JEPA 2.1 file; read_vjepa (model.init_from, export) reads V-JEPA 2 files only: load its "
            "encoder as a backbone (backbone=vjepa21_pt) or fine-tune it (model.net.rope_variant=vjepa21)"
        )
    if is_vjepa_run(obj):
        obj = run_parts(obj["state_dict"])
    if not isinstance(obj, Mapping) or not any(isinstance(obj.get(p), Mapping) for p in PARTS):
        top = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: not a V-JEPA 2 checkpoint: expected {PARTS} state dicts, found {top}")
    parts: dict[str, dict | None] = {}
    for part in PARTS:
        state = obj.get(part)
        if state is None:
            parts[part] = None
            continue
        pattern = VJEPA_PREDICTOR_KEY if part == "predictor" else VJEPA_ENCODER_KEY
        bad = [k for k, v in state.items() if not (isinstance(v, torch.Tensor) and pattern.match(strip_wrappers(k)))]
        if bad:
            raise _bad_keys(path, part, bad)
        parts[part] = {strip_wrappers(k): v for k, v in state.items()}
    return parts


def run_parts(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A V-JEPA run's Lightning state dict as the official file's ``encoder``/``target_encoder``/``predictor``."""
    prefixes = {PT_PARTS[part]: prefix for part, prefix in RUN_PREFIXES.items()} | {"predictor": RUN_PREDICTOR}
    return {part: {k.removeprefix(p): v for k, v in state.items() if k.startswith(p)} for part, p in prefixes.items()}


def _infer_arch(parts: Mapping[str, dict | None], config: Mapping[str, Any], source: str, given: dict) -> VJEPAArch:
    """Width, depth, heads, MLP ratio, patch, tubelet, clip size of the encoder, and the predictor's."""
    enc = parts["encoder"] or parts["target_encoder"]
    if enc is None or "patch_embed.proj.weight" not in enc or "blocks.0.mlp.fc1.weight" not in enc:
        raise CheckpointError(f"{source}: no V-JEPA 2 encoder (patch_embed.proj.weight, blocks.0.mlp.fc1.weight)")
    w = enc["patch_embed.proj.weight"]
    dim = w.shape[0]
    arch = VJEPAArch(
        embed_dim=dim,
        depth=block_depth(enc),
        num_heads=given["num_heads"] or config.get("num_attention_heads") or KNOWN_HEADS.get(dim, max(1, dim // 64)),
        mlp_ratio=enc["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        patch_size=w.shape[-1],
        tubelet_size=w.shape[2],
        img_size=given["img_size"] or config.get("crop_size"),
        num_frames=given["num_frames"] or config.get("frames_per_clip"),
        ln_eps=config.get("layer_norm_eps", 1e-6),
    )
    pred = parts["predictor"]
    if pred is None:
        return arch
    if "predictor_embed.weight" not in pred or "predictor_blocks.0.mlp.fc1.weight" not in pred:
        raise CheckpointError(f"{source}: predictor without predictor_embed / predictor_blocks.0 weights")
    pred_dim = pred["predictor_embed.weight"].shape[0]
    heads = given["pred_heads"] or config.get("pred_num_attention_heads")
    return arch._replace(
        pred_dim=pred_dim,
        pred_depth=block_depth(pred, "predictor_blocks."),
        pred_heads=heads or KNOWN_PRED_HEADS.get(pred_dim, max(1, pred_dim // 32)),
        pred_mlp_ratio=pred["predictor_blocks.0.mlp.fc1.weight"].shape[0] / pred_dim,
        num_mask_tokens=sum(1 for k in pred if re.fullmatch(r"mask_tokens\.\d+", k)),
    )


def load_vjepa(
    weights: VJEPAWeights,
    encoder: nn.Module | None = None,
    predictor: nn.Module | None = None,
    *,
    part: str = "encoder",
    strict: bool = True,
) -> dict[str, LoadReport]:
    """Load ``weights.<part>`` (``encoder`` or ``target_encoder``) into ``encoder`` and the predictor into
    ``predictor`` with :func:`~surgvista.checkpoints.load.load_matching` (``strict``: every key must match)."""
    if part not in ("encoder", "target_encoder"):
        raise ValueError(f"part must be 'encoder' or 'target_encoder', got {part!r}")
    reports: dict[str, LoadReport] = {}
    for name, module, state in ((part, encoder, getattr(weights, part)), ("predictor", predictor, weights.predictor)):
        if module is None:
            continue
        if state is None:
            raise CheckpointError(f"{weights.source}: no {name} weights in the checkpoint")
        reports[name] = load_matching(state, module, source=f"{weights.source} [{name}]", strict=strict)
    return reports


def export_vjepa_hf(student: nn.Module, predictor: nn.Module, folder: str | Path, overwrite: bool = False) -> Path:
    """Write our RoPE student's encoder and ``predictor`` as a ``transformers`` ``VJEPA2Model`` folder
    (``config.json`` + ``model.safetensors``), atomically; an existing non-empty ``folder`` is refused unless
    ``overwrite`` (then replaced once the new folder is complete)."""
    config = vjepa_hf_config(student, predictor)
    return write_vjepa_hf({**student.state_dict(), **predictor.state_dict()}, config, folder, overwrite)


def write_vjepa_hf(state: Mapping[str, torch.Tensor], config: Any, folder: str | Path, overwrite: bool = False) -> Path:
    """Our V-JEPA 2 encoder + predictor tensors under their ``VJEPA2Model`` names and ``config`` (a
    ``VJEPA2Config``) as a ``save_pretrained`` folder, atomically; ``overwrite`` replaces only an earlier export's
    folder (its marker lists every file in it)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.is_file() or (not overwrite and folder.is_dir() and any(folder.iterdir())):
        raise ExportError(f"{folder} already exists and is not empty; choose a new folder (or overwrite=true)")
    check_replaceable_folder(folder, EXPORT)
    state = vjepa_to_hf(state)

    def write(tmp: Path) -> None:
        tensors = {k: v.detach().contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / "model.safetensors"), {"format": "pt"})
        config.to_json_file(str(tmp / "config.json"))
        record_written(tmp, EXPORT, [p.name for p in tmp.iterdir()])

    return atomic_write_dir(folder, write)


def vjepa_hf_config(student: nn.Module, predictor: nn.Module) -> Any:
    """The ``transformers.VJEPA2Config`` of an encoder-only RoPE student (fused qkv bias) and its predictor."""
    _check_exportable(student, predictor)
    blk, pblk = student.blocks[0], predictor.predictor_blocks[0]
    arch = VJEPAArch(
        embed_dim=student.embed_dim,
        depth=len(student.blocks),
        num_heads=blk.attn.num_heads,
        mlp_ratio=blk.mlp.fc1.out_features / student.embed_dim,
        patch_size=student.patch_size,
        tubelet_size=student.tubelet_size,
        img_size=student.img_size,
        num_frames=student.num_frames,
        ln_eps=student.norm.eps,
        pred_dim=predictor.pred_dim,
        pred_depth=len(predictor.predictor_blocks),
        pred_heads=pblk.attn.num_heads,
        pred_mlp_ratio=pblk.mlp.fc1.out_features / predictor.pred_dim,
        num_mask_tokens=len(predictor.mask_tokens),
    )
    return hf_config_of(arch)


def hf_config_of(arch: VJEPAArch) -> Any:
    """The ``transformers.VJEPA2Config`` of ``arch`` (encoder with fused qkv bias, and its predictor)."""
    try:
        from transformers import VJEPA2Config
    except ImportError:
        raise ExportError("a Hugging Face V-JEPA 2 export needs the transformers package") from None
    if arch.pred_dim is None or arch.img_size is None or arch.num_frames is None:
        raise ExportError("VJEPA2Model needs an encoder, a predictor and the clip size (img_size, num_frames)")
    return VJEPA2Config(
        patch_size=arch.patch_size,
        crop_size=arch.img_size,
        frames_per_clip=arch.num_frames,
        tubelet_size=arch.tubelet_size,
        hidden_size=arch.embed_dim,
        num_attention_heads=arch.num_heads,
        num_hidden_layers=arch.depth,
        mlp_ratio=arch.mlp_ratio,
        layer_norm_eps=arch.ln_eps,
        qkv_bias=True,
        hidden_act="gelu",
        pred_hidden_size=arch.pred_dim,
        pred_num_attention_heads=arch.pred_heads,
        pred_num_hidden_layers=arch.pred_depth,
        pred_num_mask_tokens=arch.num_mask_tokens,
        pred_mlp_ratio=arch.pred_mlp_ratio,
        architectures=["VJEPA2Model"],
    )


def export_vjepa_weights(
    weights: VJEPAWeights, folder: str | Path, part: str = "target_encoder", overwrite: bool = False
) -> Path:
    """Write ``weights.<part>`` (``target_encoder``: what the released HF models carry; or ``encoder``) and the
    predictor as a ``VJEPA2Model`` folder; what ``VJEPA2Model`` cannot hold is one :class:`ExportError` line."""
    if part not in ("encoder", "target_encoder"):
        raise ExportError(f"part must be 'encoder' or 'target_encoder' (student or target), got {part!r}")
    encoder = getattr(weights, part)
    for name, state in ((part, encoder), ("predictor", weights.predictor)):
        if state is None:
            raise ExportError(f"{weights.source}: no {name} weights; VJEPA2Model holds an encoder and a predictor")
    if "blocks.0.attn.qkv.bias" not in encoder:
        raise ExportError(f"{weights.source}: VJEPA2Model needs a fused qkv bias (qkv_bias='fused'); none found")
    config = hf_config_of(weights.arch)
    _check_heads(weights.arch, weights.source)
    return write_vjepa_hf({**encoder, **weights.predictor}, config, folder, overwrite)


def _check_heads(arch: VJEPAArch, source: str) -> None:
    """Widths must split into the heads (a wrong head count cannot be seen in the weights: it comes from the run)."""
    pairs = (("encoder", arch.embed_dim, arch.num_heads), ("predictor", arch.pred_dim, arch.pred_heads))
    for what, dim, heads in pairs:
        if dim % heads:
            raise ExportError(f"{source}: {what} width {dim} is not divisible by {heads} heads; pass the head count")


def _check_exportable(student: nn.Module, predictor: nn.Module) -> None:
    """Refuse what ``VJEPA2Model`` cannot hold: a table encoder, decoders, another qkv bias, mixed sizes or eps."""
    keys = list(student.state_dict())
    if getattr(student, "rope_variant", "vjepa2") != "vjepa2":
        raise ExportError(f"VJEPA2Model computes V-JEPA 2's RoPE, not rope_variant={student.rope_variant!r}")
    if getattr(student, "pos_embed_kind", None) != "rope":
        kind = getattr(student, "pos_embed_kind", None)
        raise ExportError(f"VJEPA2Model needs a RoPE encoder (pos_embed='rope'), got pos_embed={kind!r}")
    extra = [k for k in keys if not VJEPA_ENCODER_KEY.match(k)]
    if extra or "blocks.0.attn.qkv.bias" not in keys:
        raise ExportError(
            f"VJEPA2Model holds an encoder-only student with qkv_bias='fused'; these keys have no place: {extra[:5]}"
        )
    if tuple(predictor.token_grid) != tuple(student.token_grid) or predictor.embed_dim != student.embed_dim:
        raise ExportError(
            f"predictor (grid {predictor.token_grid}, width {predictor.embed_dim}) does not match the student "
            f"(grid {student.token_grid}, width {student.embed_dim})"
        )
    eps = {student.norm.eps, predictor.predictor_norm.eps}
    if len(eps) > 1:
        raise ExportError(f"VJEPA2Config has one layer_norm_eps; the student and predictor use {sorted(eps)}")
