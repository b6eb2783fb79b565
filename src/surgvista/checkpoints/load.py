"""Load any supported checkpoint into our models, with layout detection and a key-diff report.

``load_backbone`` reads the source with :func:`surgvista.checkpoints.parts.read_encoder`, maps its key style (ours and
the official SurgVISTA files, VideoMAE/MVD/UMT originals, Hugging Face VideoMAE; see
:mod:`surgvista.checkpoints.keys`) to canonical keys and matches them against the model. :func:`load_matching`
loads a state dict whose keys already are the model's (any ``nn.Module``) with the same report.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgvista.checkpoints.errors import CheckpointError
from surgvista.checkpoints.grids import Grid, classify_table_grid, guess_grid, interpolate_pos_embed
from surgvista.checkpoints.keys import POSITION_TABLES, Canonical, block_depth, detect_style, to_canonical
from surgvista.checkpoints.parts import read_encoder
from surgvista.layers.position import POS_EMBED_KINDS, position_table
from surgvista.models.presets import STUDENT_PRESETS

log = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]

# Keys that only a pre-training model has: loaded into a student, ignored (by design) for a classifier.
PRETRAIN_ONLY = re.compile(
    r"^(down_img|down_vid|decoder_img|decoder_vid|mask_token_img|mask_token_vid|pos_embed_img|"
    r"pos_embed_vid)(\.|$)"
)
# Keys some originals carry that no model of ours has (UMT's CLIP-alignment decoder, MVD/VideoMAE extras).
FOREIGN_PRETRAIN_ONLY = re.compile(
    r"^(clip_decoder|clip_pos_embed|clip_norm|clip_proj|decoder_image|decoder_video|"
    r"image_decoder|video_decoder|encoder_to_decoder_image|encoder_to_decoder_video|"
    r"mask_token_image|mask_token_video|teacher)(\.|_|$)"
)


@dataclass
class LoadReport:
    """What :func:`load_backbone` (or :func:`load_matching`) did: the detected layout and the key diff."""

    source: str
    layout: str
    pos_embed: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    expected_missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing is missing, unexpected or of the wrong shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"checkpoint {self.source}", f"  layout: {self.layout}", f"  loaded: {len(self.loaded)} tensors"]
        if self.pos_embed:
            lines.append(f"  position embedding: {self.pos_embed}")
        for title, keys in (
            ("missing (left as initialised)", self.missing),
            ("unexpected (not loaded)", self.unexpected),
            ("wrong shape (not loaded)", self.mismatched),
            ("expected missing (fresh)", self.expected_missing),
            ("ignored (pre-training only / recomputed)", self.ignored),
        ):
            if keys:
                lines.append(f"  {title}: {len(keys)}")
                lines += [f"    {k}" for k in (_by_module(keys) if keys is self.ignored else _compress(keys))]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _compress(keys: list[str], limit: int = 40) -> list[str]:
    """Collapse ``blocks.N.`` runs so that long lists stay readable."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        pat = re.sub(r"(^|\.)(blocks|layer|decoder_layers)\.(\d+)\.", r"\1\2.*.", k)
        groups.setdefault(pat, []).append(k)
    out = [g[0] if len(g) == 1 else f"{pat} (×{len(g)})" for pat, g in groups.items()]
    return out if len(out) <= limit else [*out[:limit], f"... and {len(out) - limit} more"]


def _by_module(keys: list[str]) -> list[str]:
    """Count keys per top-level module (``decoder_vid.* (×51)``)."""
    groups = Counter(k.split(" ")[0].split(".")[0] for k in keys)
    return [h if n == 1 else f"{h}.* (×{n})" for h, n in groups.items()]


# ----------------------------------------------------------------------------------------------- loading


def load_backbone(
    source: str | Path | Mapping[str, Any],
    model: nn.Module,
    *,
    strict: bool = True,
    layout: str | None = None,
    pos_embed_kind: str | None = None,
    load_head: bool | None = None,
    source_grid: Grid | None = None,
    part: str | None = None,
) -> LoadReport:
    """Load the encoder (and whatever else the model has) of ``source`` into ``model``; return a :class:`LoadReport`.

    Args:
        source: a path (``.pth``/``.ckpt``/``.bin``/``.safetensors``/HF directory) or an already-loaded mapping.
        model: a :class:`~surgvista.models.student.SurgVISTAStudent` or
            :class:`~surgvista.models.classifier.VideoClassifier`.
        strict: raise :class:`CheckpointError` on any missing, unexpected or wrong-shape key and on a position
            embedding kind that disagrees with the model's; ``False`` loads what matches and logs the diff.
            A checkpoint of another architecture (width, depth, patch size) is an error either way.
        layout: force the key style (``surgvista``, ``videomae``, ``hf``) instead of detecting it.
        pos_embed_kind: declare the checkpoint's position table kind when it cannot be seen in the file
            (e.g. an MVD original without ``pos_embed``: ``"sincos3d"``).
        load_head: load ``fc_norm``/``head`` from a fine-tuned source (default: when present and shapes match).
        source_grid: the checkpoint's token grid, to interpolate a learned table (default: guessed).
        part: which encoder of a V-JEPA checkpoint (our run, an official ``.pt``): ``"target"`` (EMA target
            encoder, the default) or ``"student"`` (see :mod:`surgvista.checkpoints.parts`). An HF ``VJEPA2Model``
            folder's encoder loads into a RoPE model (``pos_embed="rope", qkv_bias="fused"``); a V-JEPA 2.1 file's
            into one with ``rope_variant="vjepa21"`` (a tubelet-1 model takes its single-frame patch embedding).
    """
    target = model.state_dict()
    embed = target.get("patch_embed.proj.weight")
    tubelet = embed.shape[2] if embed is not None and embed.ndim == 5 else None
    report, canon, style, declared, variant = _canonical_source(source, layout, part, tubelet)
    pos_embed_kind = pos_embed_kind or declared
    if getattr(model, "token_grid", None) is None:
        raise CheckpointError(
            f"{type(model).__name__} has no token_grid; expected a SurgVISTAStudent or VideoClassifier"
        )
    grid = tuple(model.token_grid)
    kind = getattr(model, "pos_embed_kind", "sincos3d")
    src_kind = _source_pos_kind(canon, style, pos_embed_kind, source_grid, grid, report, kind)
    _check_rope_fit(report, src_kind, kind, target, canon)
    _check_rope_variant(report, variant, model)
    _check_pos_kind(report, src_kind, kind, strict)
    new = _position_tables(canon, target, kind, src_kind, grid, source_grid, report)
    new.update(_head_and_pooling_norm(canon, target, load_head, report))
    _convert_qkv_bias(canon, target, report)
    shape_errors = _match_remaining(canon, target, new, report)
    if "down_vid.bias" in target and "down_vid.weight" in new and "down_vid.bias" not in new and style != "surgvista":
        new["down_vid.bias"] = torch.zeros_like(target["down_vid.bias"])
        report.expected_missing.append("down_vid.bias (VideoMAE/HF encoder_to_decoder has no bias: set to 0)")
    _finish_report(report, canon, target, new, shape_errors, strict)
    state_to_load = {**target, **{k: v.to(target[k].dtype) for k, v in new.items()}}
    model.load_state_dict(state_to_load, strict=True)
    return report


def _canonical_source(
    source: str | Path | Mapping[str, Any], layout: str | None, part: str | None = None, tubelet: int | None = None
) -> tuple[LoadReport, Canonical, str, str | None, str | None]:
    """Read ``source`` (``part``: which encoder; ``tubelet``: the model's), settle its key style and map it to
    canonical keys: ``(report, canon, style, position kind the source declares, its RoPE variant if known)``."""
    found = read_encoder(source, part, tubelet)
    name, state, container, extra, meta, _ = found.src
    style = layout or found.style or ("hf" if "hf_config" in meta else detect_style(list(state)))
    if style not in ("surgvista", "videomae", "hf"):
        raise ValueError(f"unknown layout {style!r}; expected surgvista, videomae or hf")
    if container == "raw" and "hf_config" in meta:
        container = "hf_dir"
    elif container == "raw" and str(name).endswith(".safetensors"):
        container = "safetensors"
    report = LoadReport(source=name, layout=f"{container}/{style}", meta={**extra, **meta})
    canon, unmapped = to_canonical(state, style)
    report.unexpected += unmapped
    report.notes += [
        f"Lightning key outside the student, not loaded: {k}" for k in extra.get("lightning_other_keys", [])
    ]
    report.notes += found.notes
    return report, canon, style, found.pos_kind, found.rope_variant


def _source_pos_kind(
    canon: Canonical,
    style: str,
    declared: str | None,
    source_grid: Grid | None,
    grid: Grid,
    report: LoadReport,
    model_kind: str = "sincos3d",
) -> str | None:
    """The checkpoint's position-table kind: declared, read off its ``pos_embed``, or implied by its layout (our
    layout without an encoder table, loaded into a RoPE model: ``rope``)."""
    src_kind = declared
    if "pos_embed" in canon:
        _, table = canon["pos_embed"]
        seen, found = classify_table_grid(table, source_grid or guess_grid(table.shape[-2], grid))
        if seen == "sincos3d" and found != grid:
            report.notes.append(f"checkpoint pos_embed is the sincos3d table of grid {found}")
        if src_kind is None:
            src_kind = seen
        elif seen != "learned" and seen != src_kind:
            report.notes.append(f"pos_embed_kind={src_kind!r} given but the checkpoint table is {seen}")
    elif src_kind is None and model_kind == "rope" and style == "surgvista":
        src_kind = "rope"  # a RoPE student stores no encoder table; its decoders' sincos3d tables say nothing of it
    elif src_kind is None and style in ("hf", "videomae"):
        src_kind = "sinusoid1d"  # HF and VideoMAE/UMT originals never store their (1-D) table
    elif src_kind is None and ("down_img.weight" in canon or "pos_embed_img" in canon):
        src_kind = "sincos3d"
    if src_kind is not None and src_kind not in POS_EMBED_KINDS:
        raise ValueError(f"unknown pos_embed_kind {src_kind!r}; expected one of {POS_EMBED_KINDS}")
    return src_kind


def _position_tables(
    canon: Canonical,
    target: StateDict,
    kind: str,
    src_kind: str | None,
    grid: Grid,
    source_grid: Grid | None,
    report: LoadReport,
) -> dict[str, torch.Tensor]:
    """Recompute fixed tables / interpolate a learned one; pops them from ``canon``, returns the model's tables."""
    new: dict[str, torch.Tensor] = {}
    for tkey in POSITION_TABLES:
        item = canon.pop(tkey, None)
        if tkey in target and kind == "learned" and tkey == "pos_embed":
            new[tkey] = _learned_table(item, src_kind, target[tkey], grid, source_grid, report)
            continue
        if tkey in target:  # a fixed table in the state dict (student): the model's own table for its geometry
            new[tkey] = target[tkey].clone()
        if item is not None:  # the checkpoint's fixed table, or any table for a classifier's non-persistent one
            report.ignored.append(item[0])
        elif tkey in target:
            report.expected_missing.append(tkey)
    if kind == "learned":
        report.pos_embed = report.pos_embed or "learned table"
    elif kind == "rope":
        report.pos_embed = "3-D RoPE (no encoder table)"
    else:
        report.pos_embed = f"fixed {kind} table for grid {grid}" + (f" (checkpoint: {src_kind})" if src_kind else "")
    return new


def _head_and_pooling_norm(
    canon: Canonical, target: StateDict, load_head: bool | None, report: LoadReport
) -> dict[str, torch.Tensor]:
    """Head and pooling norm of a classifier: loaded together, only when the head fits (or ``load_head=True``)."""
    names = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")
    head_keys = [k for k in names if k in target]
    items = {k: canon.pop(k) for k in names if k in canon}
    fits = all(k in items and tuple(items[k][1].shape) == tuple(target[k].shape) for k in head_keys)
    take = bool(head_keys) and all(k in items for k in head_keys) and (load_head or (load_head is None and fits))
    new: dict[str, torch.Tensor] = {}
    for key, (src, value) in items.items():
        if key not in target or not take:
            shape = "" if key not in target else f" (checkpoint {tuple(value.shape)}; left fresh)"
            report.ignored.append(f"{src}{shape}")
        elif tuple(value.shape) != tuple(target[key].shape):
            report.mismatched.append(f"{src}: checkpoint {tuple(value.shape)}, model {tuple(target[key].shape)}")
        else:
            new[key] = value
            report.loaded.append(key)
    if not take:
        report.expected_missing += head_keys
    if "head.weight" in target and "norm.weight" in canon and "norm.weight" not in target:
        for k in ("norm.weight", "norm.bias"):
            if k in canon:
                report.ignored.append(canon.pop(k)[0])
    return new


def _match_remaining(
    canon: Canonical, target: StateDict, new: dict[str, torch.Tensor], report: LoadReport
) -> list[str]:
    """Everything else must match one to one: fills ``new``, returns the wrong-shape entries."""
    shape_errors: list[str] = []
    for key, (src, value) in canon.items():
        if key in target:
            if tuple(value.shape) != tuple(target[key].shape):
                shape_errors.append(f"{src}: checkpoint {tuple(value.shape)}, model {tuple(target[key].shape)}")
            else:
                new[key] = value
                report.loaded.append(key)
        elif PRETRAIN_ONLY.match(key) or FOREIGN_PRETRAIN_ONLY.match(key):
            report.ignored.append(src)
        else:
            report.unexpected.append(src)
    return shape_errors


def _finish_report(
    report: LoadReport, canon: Canonical, target: StateDict, new: StateDict, shape_errors: list[str], strict: bool
) -> None:
    """List what stays missing, refuse another architecture or a failed strict load, else log the diff."""
    report.mismatched += shape_errors
    for key in target:
        if key not in new and not any(e.split(" ")[0] == key for e in report.expected_missing):
            report.missing.append(key)
    c_depth, m_depth = block_depth(canon), block_depth(target)
    if shape_errors or (c_depth and m_depth and c_depth != m_depth):
        _raise_architecture(report, canon, target)
    if strict and not report.ok:
        raise CheckpointError(f"strict load failed (pass strict=False to load what matches):\n{report}")
    log.log(logging.INFO if report.ok else logging.WARNING, "%s", report)


def _check_rope_fit(report: LoadReport, src_kind: str | None, kind: str, target: StateDict, canon: Canonical) -> None:
    """One line telling which config to set when a V-JEPA (RoPE, fused qkv bias) encoder meets another model."""
    fix = "fine-tune with model=finetune_vjepa (or set model.net.pos_embed=rope model.net.qkv_bias=fused)"
    if "patch_embed.proj.weight" in canon:
        width, depth = canon["patch_embed.proj.weight"][1].shape[0], block_depth(canon)
        names = [n for n, p in STUDENT_PRESETS.items() if (p.embed_dim, p.depth) == (width, depth)]
        size = f"model.net.preset={names[0]}" if names else f"+model.net.embed_dim={width} +model.net.depth={depth}"
        fix += f" and {size} (checkpoint: width {width}, {depth} blocks)"
    if src_kind == "rope" and kind != "rope":
        raise CheckpointError(
            f"{report.source}: a V-JEPA 2 (RoPE) encoder does not fit a model with a {kind} position table; {fix}"
        )
    if src_kind == "rope" and "blocks.0.attn.qkv.bias" not in target:
        raise CheckpointError(
            f"{report.source}: a V-JEPA 2 encoder has a fused qkv bias but the model's qkv_bias is not 'fused'; {fix}"
        )


def _check_rope_variant(report: LoadReport, variant: str | None, model: nn.Module) -> None:
    """One line when a V-JEPA 2 or 2.1 file meets a RoPE model of the other variant (RoPE has no weights to tell)."""
    have = getattr(model, "rope_variant", "vjepa2")
    if variant is None or getattr(model, "pos_embed_kind", None) != "rope" or variant == have:
        return
    what = {"vjepa21": "V-JEPA 2.1", "vjepa2": "V-JEPA 2"}[variant]
    raise CheckpointError(
        f"{report.source}: a {what} encoder needs rope_variant={variant!r} but the model has {have!r}; set "
        f"backbone.rope_variant={variant} (zoo) or model.net.rope_variant={variant} (fine-tuning)"
    )


def _check_pos_kind(report: LoadReport, src_kind: str | None, kind: str, strict: bool) -> None:
    """Refuse (``strict``) or note a checkpoint whose fixed position table is of another kind than the model's."""
    if src_kind is None:
        report.notes.append(
            "checkpoint position-table kind unknown (no pos_embed in the file); pass pos_embed_kind= to have it checked"
        )
        return
    if kind == "learned" or src_kind == "learned" or src_kind == kind:
        if src_kind == "learned" and kind != "learned":
            report.notes.append(f"checkpoint has a learned pos_embed; the model uses its fixed {kind} table")
        return
    msg = (
        f"position embedding mismatch: the checkpoint was trained with a {src_kind} table but the model uses "
        f"{kind}; build the model with pos_embed={src_kind!r}"
    )
    if strict:
        raise CheckpointError(f"{report.source}: {msg}")
    report.notes.append("WARNING " + msg)


def _learned_table(item, src_kind, current, grid, source_grid, report) -> torch.Tensor:
    """The model's learned table: loaded, interpolated to ``grid``, or the checkpoint's fixed table."""
    dim = current.shape[-1]
    if item is None:
        if src_kind in ("sincos3d", "sinusoid1d"):
            report.pos_embed = f"learned table initialised from the checkpoint's {src_kind} table for grid {grid}"
            report.expected_missing.append("pos_embed")
            return position_table(src_kind, dim, grid)
        report.missing.append("pos_embed")
        return current
    src, table = item
    if tuple(table.shape) == tuple(current.shape):
        report.loaded.append("pos_embed")
        report.pos_embed = "learned table loaded"
        return table
    s_grid = source_grid or guess_grid(table.shape[-2], grid)
    if s_grid is None or table.shape[-1] != dim:
        report.mismatched.append(
            f"{src}: checkpoint {tuple(table.shape)}, model {tuple(current.shape)} (pass source_grid= to interpolate)"
        )
        return current
    report.loaded.append("pos_embed")
    report.pos_embed = f"learned table interpolated from grid {s_grid} to {grid}"
    return interpolate_pos_embed(table, s_grid, grid)


def _convert_qkv_bias(canon: Canonical, target: StateDict, report: LoadReport) -> None:
    """Join ``q_bias``/``v_bias`` into a fused ``qkv.bias`` or split it, to the model's convention."""
    for key in [k for k in canon if k.endswith(".attn.q_bias")]:
        pre = key.removesuffix("q_bias")
        if pre + "qkv.bias" in target and pre + "q_bias" not in target and pre + "v_bias" in canon:
            (src, q), (_, v) = canon.pop(key), canon.pop(pre + "v_bias")
            canon[pre + "qkv.bias"] = (src.replace("q_bias", "{q,v}_bias"), torch.cat([q, torch.zeros_like(q), v]))
    for key in [k for k in canon if k.endswith(".attn.qkv.bias")]:
        pre = key.removesuffix("qkv.bias")
        if pre + "q_bias" in target and key not in target:
            src, b = canon[key]
            q, k, v = b.chunk(3)
            if torch.count_nonzero(k):
                continue  # a real k bias cannot be represented: reported as unexpected below
            canon.pop(key)
            canon[pre + "q_bias"], canon[pre + "v_bias"] = (src, q), (src, v)
            report.notes.append(f"{src}: fused qkv bias split into q_bias/v_bias (k bias is zero)")


def _raise_architecture(report: LoadReport, canon: Canonical, target: StateDict) -> None:
    """One :class:`CheckpointError` comparing width, patch kernel and depth, with the keys that did not fit."""
    lines = [f"{report.source}: checkpoint architecture does not match the model ({report.layout}):"]
    if "patch_embed.proj.weight" in canon and "patch_embed.proj.weight" in target:
        cw, mw = canon["patch_embed.proj.weight"][1].shape, target["patch_embed.proj.weight"].shape
        lines.append(
            f"  width: checkpoint {cw[0]}, model {mw[0]}; patch kernel checkpoint {tuple(cw[2:])}, "
            f"model {tuple(mw[2:])}"
        )
    lines.append(f"  depth: checkpoint {block_depth(canon)}, model {block_depth(target)} blocks")
    lines += [f"  unexpected: {k}" for k in _compress(report.unexpected, 10)]
    lines += [f"  wrong shape: {e}" for e in report.mismatched[:30]]
    if len(report.mismatched) > 30:
        lines.append(f"  ... and {len(report.mismatched) - 30} more")
    raise CheckpointError("\n".join(lines))


def load_matching(state: StateDict, model: nn.Module, *, source: str, strict: bool = True) -> LoadReport:
    """Load a state dict whose keys already are ``model``'s (any module, e.g. a timm model): a plain key diff.
    A wrong shape or no key in common is a :class:`CheckpointError`; ``strict`` also refuses missing/unexpected keys."""
    target = model.state_dict()
    report = LoadReport(source=source, layout="plain")
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)}, model {tuple(target[key].shape)}")
        else:
            report.loaded.append(key)
    report.missing = [k for k in target if k not in state]
    if report.mismatched or not report.loaded or (strict and not report.ok):
        raise CheckpointError(f"{source}: checkpoint does not fit {type(model).__name__}:\n{report}")
    log.log(logging.INFO if report.ok else logging.WARNING, "%s", report)
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report
