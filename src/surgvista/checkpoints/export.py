"""Export checkpoints: original SurgVISTA layout, safetensors with a model card, or a Hugging Face VideoMAE folder.

Usage (Hydra-style ``key=value`` arguments; ``surgvista-export`` is the same as ``python -m surgvista.export``)::

    python -m surgvista.export ckpt=logs/train/runs/X/checkpoints/last.ckpt format=original out=surgvista.pth
    python -m surgvista.export ckpt=... format=safetensors out=surgvista.safetensors
    python -m surgvista.export ckpt=... format=hf out=hf_dir/ [hf_arch=auto|model|pretraining|classification]

An existing ``out`` is refused unless ``overwrite=true``; ``out`` may never be the input checkpoint. ``format=hf``
with ``overwrite=true`` replaces only a folder that an earlier export wrote (its ``.surgvista-written.json`` lists
every file in it), never a folder holding other files.

Optional: ``num_heads=`` / ``decoder_heads=`` (default: from the preset with that width and depth, else
width/64), ``img_size=`` / ``num_frames=`` (default: the run's ``config.yaml``, else guessed from ``pos_embed``).

``format=hf`` writes ``config.json`` + ``model.safetensors`` loadable by ``transformers.VideoMAE*.from_pretrained``
offline. HF VideoMAE always builds a 1-D sinusoid table in code, so only ``sinusoid1d`` models can be exported
there: a 3-D sin-cos (SurgVISTA/MVD) or learned table is refused rather than silently changed.

V-JEPA: ``format=hf`` of a ``model=vjepa`` run (or an official V-JEPA 2 ``.pt``) writes a ``transformers``
``VJEPA2Model`` folder: one encoder, ``part=target`` (the EMA target encoder, the default, as the released HF
models carry) or ``part=student``, and the predictor. Heads, clip size: the run's ``config.yaml``, else
``num_heads=`` / ``pred_heads=`` / ``img_size=`` / ``num_frames=``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from surgvista.checkpoints.errors import CheckpointError, ExportError
from surgvista.checkpoints.grids import classify_table, classify_table_grid, guess_grid
from surgvista.checkpoints.hf import check_hf_pos_kind, to_hf, write_hf
from surgvista.checkpoints.keys import block_depth, detect_style, to_canonical
from surgvista.checkpoints.parts import ENCODER_PARTS, PT_PARTS, is_vjepa_pt, is_vjepa_run
from surgvista.checkpoints.read import read_state, torch_load
from surgvista.checkpoints.run_folder import run_config, run_dir
from surgvista.models.presets import STUDENT_PRESETS
from surgvista.utils.io import (
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    refuse_existing,
    same_or_nested,
    sha256_file,
)
from surgvista.utils.owned_files import EXPORT, check_replaceable_folder

FORMATS = ("original", "safetensors", "hf")


# --------------------------------------------------------------------------------------------- reading


def canonical_state(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Any accepted checkpoint → ``(state in our original layout, info)``; ``info`` has layout and metadata.

    Read by :func:`surgvista.checkpoints.read.read_state`, as the loader does: a checkpoint with non-finite
    weights is refused (:class:`CheckpointError` naming the file and the first bad tensors)."""
    src = read_state(source)
    style = "hf" if "hf_config" in src.meta else detect_style(list(src.state))
    canon, unmapped = to_canonical(src.state, style)
    if unmapped:
        raise CheckpointError(f"{src.name}: keys with no place in our layout: {unmapped[:20]}")
    info = {"source": src.name, "layout": f"{src.container}/{style}", **src.extra, **src.meta}
    if isinstance(src.raw, Mapping) and isinstance(src.raw.get("callbacks"), Mapping):
        info["callbacks"] = src.raw["callbacks"]
    return {k: v for k, (_, v) in canon.items()}, info


def _heads(dim: int, depth: int, part: str, given: int | None) -> int:
    """``given``, else the heads of the first student preset whose ``part`` (``"encoder"``: width and depth,
    ``"pixel_decoder"``: width) matches, else ``dim // 64``."""
    if given:
        return int(given)
    for preset in STUDENT_PRESETS.values():
        if part == "encoder" and (preset.embed_dim, preset.depth) == (dim, depth):
            return preset.num_heads
        if part == "pixel_decoder" and preset.pixel_decoder_dim == dim:
            return preset.pixel_decoder_heads
    return max(1, dim // 64)


def infer_architecture(state: Mapping[str, torch.Tensor], **given: Any) -> dict[str, Any]:
    """Width, depth, heads, patch/tubelet, frames and image size of an encoder (and its pixel decoder)."""
    if "patch_embed.proj.weight" not in state:
        raise ExportError("no patch_embed.proj.weight in the checkpoint: not a ViT video encoder")
    w = state["patch_embed.proj.weight"]
    dim, depth = w.shape[0], block_depth(state, "blocks.")
    tubelet = w.shape[2] if w.ndim == 5 else 1
    patch = w.shape[-1]
    arch: dict[str, Any] = {"embed_dim": dim, "depth": depth, "patch_size": patch, "tubelet_size": tubelet}
    arch["num_heads"] = _heads(dim, depth, "encoder", given.get("num_heads"))
    arch["mlp_dim"] = state["blocks.0.mlp.fc1.weight"].shape[0]
    img, frames = given.get("img_size"), given.get("num_frames")
    if (img is None or frames is None) and "pos_embed" in state:
        # A 3-D sin-cos table pins its grid; a 1-D or learned one only its length (unique grid or nothing).
        kind, grid = classify_table_grid(state["pos_embed"])
        grid = grid if kind == "sincos3d" else guess_grid(state["pos_embed"].shape[-2])
        if grid:
            frames = frames or grid[0] * tubelet
            img = img or grid[1] * patch
    arch["img_size"], arch["num_frames"] = img, frames
    if not (img and frames):
        arch["img_size"] = arch["num_frames"] = None
    if "down_vid.weight" in state:
        d = state["down_vid.weight"].shape[0]
        dd = block_depth(state, "decoder_vid.blocks.")
        arch["decoder"] = {
            "dim": d,
            "depth": dd,
            "num_heads": _heads(d, dd, "pixel_decoder", given.get("decoder_heads")),
            "mlp_dim": state["decoder_vid.blocks.0.mlp.fc1.weight"].shape[0] if dd else 4 * d,
        }
    return arch


def pos_kind(state: Mapping[str, torch.Tensor], arch: Mapping[str, Any], declared: str | None = None) -> str | None:
    """The position-table kind of the checkpoint: declared, or read off its ``pos_embed``."""
    if declared:
        return declared
    if "pos_embed" not in state:
        return None
    frames, img, p, t = arch["num_frames"], arch["img_size"], arch["patch_size"], arch["tubelet_size"]
    grid = (frames // t, img // p, img // p) if frames and img else None
    return classify_table(state["pos_embed"], grid)


# ----------------------------------------------------------------------------------------------- card


def _plain(obj: Any) -> Any:
    """JSON-safe copy (tensors → lists/numbers, unknown objects → str)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def model_card(state: Mapping[str, torch.Tensor], info: Mapping[str, Any], arch: Mapping[str, Any], kind) -> dict:
    """Config, data-manifest hashes and metrics of a checkpoint, as far as the checkpoint and its run tell."""
    card: dict[str, Any] = {
        "format": "surgvista",
        "source": info.get("source"),
        "source_layout": info.get("layout"),
        "architecture": arch,
        "pos_embed": kind,
        "num_tensors": len(state),
        "num_params": int(sum(v.numel() for v in state.values())),
    }
    for key in ("hyper_parameters", "datamodule_hyper_parameters", "epoch", "global_step", "args"):
        if key in info:
            card[key] = info[key]
    cfg = info.get("run_config") or {}
    if cfg:
        card["model_config"] = cfg.get("model")
    manifests = []
    dm = info.get("datamodule_hyper_parameters") or cfg.get("data") or {}
    for key in ("train_manifests", "val_manifests"):
        for p in dm.get(key) or []:
            path = Path(str(p))
            manifests.append({"split": key, "path": str(p), "sha256": sha256_file(path) if path.is_file() else None})
    if manifests:
        card["data_manifests"] = manifests
        joined = "".join(f"{m['path']}:{m['sha256']}" for m in manifests)
        card["data_manifest_hash"] = hashlib.sha256(joined.encode()).hexdigest()
    metrics = {}
    for name, cb in (info.get("callbacks") or {}).items():
        if isinstance(cb, Mapping):
            for k in ("best_model_score", "current_score", "monitor", "best_model_path"):
                if cb.get(k) is not None:
                    metrics[f"{name.split('{')[0]}.{k}"] = cb[k]
    run_dir = info.get("run_dir")
    if run_dir is not None:  # the CSV logger's last value of every metric
        for csv_path in sorted(Path(run_dir).glob("csv/version_*/metrics.csv"))[-1:]:
            with csv_path.open() as f:
                for row in csv.DictReader(f):
                    metrics.update({f"last.{k}": float(v) for k, v in row.items() if v not in ("", None)})
    if metrics:
        card["metrics"] = metrics
    return _plain(card)


# --------------------------------------------------------------------------------------------- export


def export(
    ckpt: str | Path,
    format: str,
    out: str | Path,
    *,
    hf_arch: str = "auto",
    num_heads: int | None = None,
    decoder_heads: int | None = None,
    img_size: int | None = None,
    num_frames: int | None = None,
    pos_embed: str | None = None,
    ln_eps: float = 1e-6,
    overwrite: bool = False,
    part: str | None = None,
    pred_heads: int | None = None,
) -> Path:
    """Write ``ckpt`` as ``format`` to ``out``; return the written path (the folder for ``hf``).

    An existing target is refused unless ``overwrite``; ``out`` may never be (or contain) ``ckpt``. Every file is
    written to a temporary name in its folder and renamed, so an interrupted export leaves no partial file.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; expected one of {FORMATS}")
    ckpt, out = Path(ckpt), Path(out)
    _check_targets(ckpt, format, out, overwrite)
    if part not in (None, *ENCODER_PARTS):
        raise ExportError(f"unknown part {part!r}; expected one of {ENCODER_PARTS} (the encoder of a V-JEPA run)")
    if format == "hf" and is_vjepa_source(ckpt):
        given = {"num_heads": num_heads, "pred_heads": pred_heads, "img_size": img_size, "num_frames": num_frames}
        return export_vjepa_run(ckpt, out, part, given, overwrite)
    if part is not None:
        raise ExportError(f"part={part!r} picks the encoder of a V-JEPA run or .pt (format=hf); {ckpt} is neither")
    state, info = _read_run_checkpoint(ckpt)
    student_cfg = _student_config(info)
    arch = infer_architecture(
        state,
        num_heads=num_heads,
        decoder_heads=decoder_heads,
        img_size=img_size or student_cfg.get("img_size"),
        num_frames=num_frames or student_cfg.get("num_frames"),
    )
    kind = pos_kind(state, arch, pos_embed or student_cfg.get("pos_embed"))
    card = model_card(state, info, arch, kind)
    if format == "original":
        # the official SurgVISTA layout {'model': state}: our state dict already uses its keys
        return atomic_torch_save({"model": {k: v.detach().clone() for k, v in state.items()}}, out)
    if format == "safetensors":
        return _write_safetensors(state, card, out)
    check_hf_pos_kind(ckpt, kind)
    hf_state, config, notes = to_hf(state, arch, hf_arch, ln_eps, info.get("class_names"))
    return write_hf(out, hf_state, config, card, notes)


def is_vjepa_source(ckpt: Path) -> bool:
    """A V-JEPA run (its ``config.yaml`` has ``model.latent``, or its weights ``latent.target.*``) or an official
    V-JEPA 2 ``.pt``."""
    model_cfg = run_config(ckpt).get("model") or {}
    if model_cfg.get("latent"):
        return True
    if ckpt.is_dir() or ckpt.suffix in (".safetensors", ".json"):
        return False
    obj = torch_load(ckpt)
    return is_vjepa_run(obj) or is_vjepa_pt(obj)


def export_vjepa_run(ckpt: Path, out: Path, part: str | None, given: dict[str, Any], overwrite: bool) -> Path:
    """A V-JEPA run's (or ``.pt``'s) target (default) or student encoder and its predictor as a ``VJEPA2Model``
    folder; heads and clip size from ``given``, else the run's ``config.yaml``."""
    from surgvista.checkpoints.vjepa import export_vjepa_weights, read_vjepa

    model_cfg = run_config(ckpt).get("model") or {}
    student = model_cfg.get("student") or {}
    if student.get("rope_variant", "vjepa2") != "vjepa2":
        raise ExportError(f"{ckpt}: VJEPA2Model computes V-JEPA 2's RoPE; this run's student has rope_variant "
                          f"{student.get('rope_variant')!r}")  # fmt: skip
    preset = STUDENT_PRESETS.get(student.get("preset"))
    from_run = {
        "num_heads": student.get("num_heads") or (preset.num_heads if preset else None),
        "pred_heads": ((model_cfg.get("latent") or {}).get("predictor") or {}).get("num_heads"),
        "img_size": student.get("img_size"),
        "num_frames": student.get("num_frames"),
    }
    weights = read_vjepa(ckpt, **{k: given.get(k) or from_run[k] for k in from_run})
    return export_vjepa_weights(weights, out, PT_PARTS[part or "target"], overwrite)


def _read_run_checkpoint(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`canonical_state` of ``ckpt``, its ``info`` extended with the run's config and folder."""
    state, info = canonical_state(ckpt)
    info["run_config"] = run_config(ckpt)
    info["run_dir"] = run_dir(ckpt)
    return state, info


def _student_config(info: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder's config: the run's ``model.student``/``model.net``, else an exported checkpoint's card."""
    cfg = info["run_config"]
    model_cfg = (cfg.get("model") or {}) if cfg else {}
    student_cfg = model_cfg.get("student") or model_cfg.get("net") or {}  # pre-training | fine-tuning run
    if not student_cfg and isinstance(info.get("card"), Mapping):
        student_cfg = {**info["card"].get("architecture", {}), "pos_embed": info["card"].get("pos_embed")}
    return student_cfg


def _write_safetensors(state: Mapping[str, torch.Tensor], card: Mapping[str, Any], out: Path) -> Path:
    """``out`` (tensors, the card in its metadata) and the card as ``out.with_suffix('.json')``, each atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    text = json.dumps(card, indent=2, sort_keys=True)
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", "surgvista_card": text}))
    atomic_write_text(out.with_suffix(".json"), text + "\n")
    return out


def _check_targets(ckpt: Path, format: str, out: Path, overwrite: bool) -> None:
    """Refuse an export onto its own input, onto existing files unless ``overwrite``, and (``hf``) onto a folder
    holding files no earlier export wrote even with ``overwrite`` (before reading)."""
    targets = [out, out.with_suffix(".json")] if format == "safetensors" else [out]
    for target in targets:
        if ckpt.exists() and same_or_nested(target, ckpt):
            raise ExportError(f"out={target} would overwrite the input checkpoint ckpt={ckpt}; choose another out")
        refuse_existing(target, overwrite)
    if format == "hf" and overwrite:  # replaces an earlier export's folder, never a folder of other files
        check_replaceable_folder(out, EXPORT)
    if format != "hf" and out.is_dir():
        raise ExportError(f"out={out} is a folder; format={format} writes one file (give a file name)")
