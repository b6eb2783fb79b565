"""Export checkpoints: original SurgVISTA layout, safetensors with a model card, or a Hugging Face VideoMAE folder.

Usage (Hydra-style ``key=value`` arguments; ``surgvista-export`` is the same as ``python -m surgvista.export``)::

    python -m surgvista.export ckpt=logs/train/runs/X/checkpoints/last.ckpt format=original out=surgvista.pth
    python -m surgvista.export ckpt=... format=safetensors out=surgvista.safetensors
    python -m surgvista.export ckpt=... format=hf out=hf_dir/ [hf_arch=auto|model|pretraining|classification]

An existing ``out`` is refused unless ``overwrite=true``; ``out`` may never be the input checkpoint.

Optional: ``num_heads=`` / ``decoder_heads=`` (default: from the preset with that width and depth, else
width/64), ``img_size=`` / ``num_frames=`` (default: the run's ``config.yaml``, else guessed from ``pos_embed``).

``format=hf`` writes ``config.json`` + ``model.safetensors`` loadable by ``transformers.VideoMAE*.from_pretrained``
offline. HF VideoMAE always builds a 1-D sinusoid table in code, so only ``sinusoid1d`` models can be exported
there: a 3-D sin-cos (SurgVISTA/MVD) or learned table is refused rather than silently changed.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from surgvista.checkpoints.load import (
    CheckpointError,
    block_depth,
    classify_table,
    classify_table_grid,
    detect_style,
    guess_grid,
    read_checkpoint,
    to_canonical,
    unwrap,
)
from surgvista.models.presets import STUDENT_PRESETS
from surgvista.utils.errors import UserError, user_errors
from surgvista.utils.io import (
    atomic_torch_save,
    atomic_write,
    atomic_write_dir,
    atomic_write_text,
    refuse_existing,
    same_or_nested,
)

FORMATS = ("original", "safetensors", "hf")
HF_ARCHS = ("auto", "model", "pretraining", "classification")


class ExportError(UserError, ValueError):
    """A checkpoint that cannot be written in the requested format (the message says why)."""


# --------------------------------------------------------------------------------------------- reading


def canonical_state(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Any accepted checkpoint → ``(state in our original layout, info)``; ``info`` has layout and metadata."""
    name = str(source) if isinstance(source, (str, Path)) else "<mapping>"
    obj, meta = read_checkpoint(source) if isinstance(source, (str, Path)) else (source, {})
    state, container, extra = unwrap(obj, name)
    style = "hf" if "hf_config" in meta else detect_style(list(state))
    canon, unmapped = to_canonical(state, style)
    if unmapped:
        raise CheckpointError(f"{name}: keys with no place in our layout: {unmapped[:20]}")
    info = {"source": name, "layout": f"{container}/{style}", **extra, **meta}
    if isinstance(obj, Mapping) and isinstance(obj.get("callbacks"), Mapping):
        info["callbacks"] = obj["callbacks"]
    return {k: v for k, (_, v) in canon.items()}, info


def run_config(ckpt: Path) -> dict[str, Any]:
    """The resolved ``config.yaml`` that ``train.py`` saved next to ``checkpoints/`` (empty dict if none)."""
    from omegaconf import OmegaConf

    for cand in (ckpt.parent / "config.yaml", ckpt.parent.parent / "config.yaml"):
        if cand.is_file():
            return OmegaConf.to_container(OmegaConf.load(cand), resolve=False)
    return {}


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


# ------------------------------------------------------------------------------------------ conversions


def to_original(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{'model': state}``: the official SurgVISTA layout (our state dict already uses its keys)."""
    return {"model": {k: v.detach().clone() for k, v in state.items()}}


_HF_LAYER = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


def _layer_to_hf(rest: str, value: torch.Tensor, dst: str, out: dict[str, torch.Tensor]) -> None:
    if rest == "attn.qkv.weight":
        for name, part in zip(("query", "key", "value"), value.chunk(3)):
            out[f"{dst}attention.attention.{name}.weight"] = part.clone()
    elif rest in ("attn.q_bias", "attn.v_bias"):
        out[f"{dst}attention.attention.{'query' if rest[5] == 'q' else 'value'}.bias"] = value.clone()
    else:
        mod, kind = rest.rsplit(".", 1)
        if mod not in _HF_LAYER:
            raise ExportError(f"no Hugging Face VideoMAE equivalent for block key {rest!r}")
        out[f"{dst}{_HF_LAYER[mod]}.{kind}"] = value.clone()


def to_hf(
    state: Mapping[str, torch.Tensor],
    arch: Mapping[str, Any],
    hf_arch: str = "auto",
    ln_eps: float = 1e-6,
    class_names: list[str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """Our layout → ``(HF state dict, config.json dict, notes)`` for a 1-D-table model; ``class_names`` become
    ``id2label`` of a classifier (``LABEL_<i>`` without them)."""
    _check_hf_request(state, hf_arch)
    hf_arch = _resolve_hf_arch(state, hf_arch)
    _check_hf_target(state, arch, hf_arch)
    mean_pool = hf_arch == "classification" and "fc_norm.weight" in state
    out, notes = _hf_state(state, hf_arch, mean_pool)
    config = _hf_config(arch, hf_arch, ln_eps, mean_pool)
    if hf_arch == "classification":
        config.update(_hf_labels(state["head.weight"].shape[0], class_names))
        notes.append("HF VideoMAE hard-codes eps 1e-5 on fc_norm (ours: ln_eps); logits may differ by ~1e-6")
    if hf_arch == "pretraining":
        notes.append("HF VideoMAE hard-codes eps 1e-5 on the decoder's final norm (ours: decoder_norm_eps)")
    return out, config, notes


def _check_hf_request(state: Mapping[str, torch.Tensor], hf_arch: str) -> None:
    """Refuse an unknown ``hf_arch`` and what no HF VideoMAE class can hold (image decoder, fused qkv bias)."""
    if hf_arch not in HF_ARCHS:
        raise ExportError(f"unknown hf_arch {hf_arch!r}; expected one of {HF_ARCHS}")
    if any(k.startswith(("down_img", "decoder_img", "mask_token_img")) for k in state) and hf_arch == "pretraining":
        raise ExportError("the image-distillation decoder has no Hugging Face VideoMAE equivalent")
    if any(".attn.qkv.bias" in k for k in state):
        raise ExportError("fused qkv.bias (k bias) cannot be expressed by HF VideoMAE (q/v biases only)")


def _resolve_hf_arch(state: Mapping[str, torch.Tensor], hf_arch: str) -> str:
    """``auto`` → classification with a head, pre-training with a bias-free pixel decoder only, else model."""
    if hf_arch != "auto":
        return hf_arch
    if "head.weight" in state:
        return "classification"
    if "decoder_vid.head.weight" in state and "down_img.weight" not in state and not _decoder_bias_nonzero(state):
        return "pretraining"
    return "model"


def _decoder_bias_nonzero(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``down_vid.bias`` exists and is non-zero (HF's ``encoder_to_decoder`` has no bias)."""
    return "down_vid.bias" in state and bool(torch.count_nonzero(state["down_vid.bias"]))


def _check_hf_target(state: Mapping[str, torch.Tensor], arch: Mapping[str, Any], hf_arch: str) -> None:
    """Refuse a resolved ``hf_arch`` the checkpoint lacks the weights for, and an unknown geometry."""
    if hf_arch == "pretraining":
        if "decoder_vid.head.weight" not in state:
            raise ExportError("hf_arch=pretraining needs a pixel decoder (decoder_vid.*) in the checkpoint")
        if _decoder_bias_nonzero(state):
            raise ExportError(
                "down_vid.bias is non-zero but HF's encoder_to_decoder has no bias: use hf_arch=model (encoder only)"
            )
    if hf_arch == "classification" and "head.weight" not in state:
        raise ExportError("hf_arch=classification needs fc_norm/head in the checkpoint (a fine-tuned model)")
    if arch["img_size"] is None or arch["num_frames"] is None:
        raise ExportError("image size / frame count unknown: pass img_size= and num_frames=")


def _hf_state(
    state: Mapping[str, torch.Tensor], hf_arch: str, mean_pool: bool
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every tensor under its HF ``hf_arch`` name (cloned); a key with no place there becomes a note."""
    pre = "" if hf_arch == "model" else "videomae."
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for key, value in state.items():
        placed = (
            _encoder_key_to_hf(key, value, pre, mean_pool, out)
            or (hf_arch == "classification" and _head_key_to_hf(key, value, out))
            or (hf_arch == "pretraining" and _decoder_key_to_hf(key, value, out))
        )
        if not placed:
            notes.append(f"not exported (no place in HF {hf_arch}): {key}")
    return out, notes


def _encoder_key_to_hf(key: str, value: torch.Tensor, pre: str, mean_pool: bool, out: dict[str, torch.Tensor]) -> bool:
    """Place one encoder tensor in ``out``; ``False`` if ``key`` is not an encoder key."""
    if key in ("pos_embed", "pos_embed_vid", "pos_embed_img"):
        return True  # HF recomputes the 1-D sinusoid tables
    if key.startswith("patch_embed.proj."):
        out[f"{pre}embeddings.patch_embeddings.projection.{key.rsplit('.', 1)[1]}"] = value.clone()
    elif m := re.match(r"blocks\.(\d+)\.(.*)$", key):
        _layer_to_hf(m[2], value, f"{pre}encoder.layer.{m[1]}.", out)
    elif key.startswith("norm."):
        if not mean_pool:
            out[f"{pre}layernorm.{key[5:]}"] = value.clone()
    else:
        return False
    return True


def _head_key_to_hf(key: str, value: torch.Tensor, out: dict[str, torch.Tensor]) -> bool:
    """Place one classifier tensor (``fc_norm``, ``head`` → ``classifier``); ``False`` if it is neither."""
    if not key.startswith(("fc_norm.", "head.")):
        return False
    out[key.replace("head.", "classifier.")] = value.clone()
    return True


def _decoder_key_to_hf(key: str, value: torch.Tensor, out: dict[str, torch.Tensor]) -> bool:
    """Place one pixel-decoder tensor of ``VideoMAEForPreTraining``; ``False`` if ``key`` is not one."""
    if key == "down_vid.weight":
        out["encoder_to_decoder.weight"] = value.clone()
    elif key == "mask_token_vid":
        out["mask_token"] = value.clone()
    elif m := re.match(r"decoder_vid\.blocks\.(\d+)\.(.*)$", key):
        _layer_to_hf(m[2], value, f"decoder.decoder_layers.{m[1]}.", out)
    elif key.startswith(("decoder_vid.norm.", "decoder_vid.head.")):
        out[key.replace("decoder_vid.", "decoder.")] = value.clone()
    elif key != "down_vid.bias":  # down_vid.bias: checked to be zero by _check_hf_target
        return False
    return True


def _hf_config(arch: Mapping[str, Any], hf_arch: str, ln_eps: float, mean_pool: bool) -> dict[str, Any]:
    """``config.json`` of a ``VideoMAEConfig`` for ``arch`` (labels are added by the caller)."""
    dec = arch.get("decoder") or {"dim": 384, "depth": 4, "num_heads": 6, "mlp_dim": 1536}  # VideoMAEConfig defaults
    return {
        "model_type": "videomae",
        "architectures": [
            {"model": "VideoMAEModel", "pretraining": "VideoMAEForPreTraining"}.get(
                hf_arch, "VideoMAEForVideoClassification"
            )
        ],
        "image_size": arch["img_size"],
        "patch_size": arch["patch_size"],
        "num_channels": 3,
        "num_frames": arch["num_frames"],
        "tubelet_size": arch["tubelet_size"],
        "hidden_size": arch["embed_dim"],
        "num_hidden_layers": arch["depth"],
        "num_attention_heads": arch["num_heads"],
        "intermediate_size": arch["mlp_dim"],
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": ln_eps,
        "qv_bias": True,
        "use_mean_pooling": mean_pool,
        "decoder_num_attention_heads": dec["num_heads"],
        "decoder_hidden_size": dec["dim"],
        "decoder_num_hidden_layers": dec["depth"],
        "decoder_intermediate_size": dec["mlp_dim"],
        "norm_pix_loss": True,
    }


def _hf_labels(num_classes: int, class_names: list[str] | None) -> dict[str, dict]:
    """``id2label``/``label2id`` of a ``num_classes`` head: ``class_names`` if given, else ``LABEL_<i>``."""
    if class_names is not None and len(class_names) != num_classes:
        raise ExportError(f"{len(class_names)} class names for a {num_classes}-class head")
    labels = list(class_names) if class_names is not None else [f"LABEL_{i}" for i in range(num_classes)]
    return {
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    }


# ----------------------------------------------------------------------------------------------- card


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
            manifests.append({"split": key, "path": str(p), "sha256": _sha256(path) if path.is_file() else None})
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
) -> Path:
    """Write ``ckpt`` as ``format`` to ``out``; return the written path (the folder for ``hf``).

    An existing target is refused unless ``overwrite``; ``out`` may never be (or contain) ``ckpt``. Every file is
    written to a temporary name in its folder and renamed, so an interrupted export leaves no partial file.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; expected one of {FORMATS}")
    ckpt, out = Path(ckpt), Path(out)
    _check_targets(ckpt, format, out, overwrite)
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
        return atomic_torch_save(to_original(state), out)
    if format == "safetensors":
        return _write_safetensors(state, card, out)
    _check_hf_pos_kind(ckpt, kind)
    hf_state, config, notes = to_hf(state, arch, hf_arch, ln_eps, info.get("class_names"))
    return _write_hf(out, hf_state, config, card, notes)


def _read_run_checkpoint(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`canonical_state` of ``ckpt``, its ``info`` extended with the run's config and folder."""
    state, info = canonical_state(ckpt)
    info["run_config"] = run_config(ckpt)
    info["run_dir"] = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
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


def _check_hf_pos_kind(ckpt: Path, kind: str | None) -> None:
    """Refuse an HF export unless the position table is known to be the 1-D sinusoid HF recomputes."""
    if kind is None:
        raise ExportError(
            f"{ckpt}: the checkpoint stores no pos_embed, so its position-table kind is unknown; pass "
            "pos_embed=sinusoid1d if (and only if) it was trained with the VideoMAE 1-D table"
        )
    if kind != "sinusoid1d":
        raise ExportError(
            f"{ckpt}: refusing to export a {kind} position embedding to Hugging Face VideoMAE, which always "
            "recomputes a 1-D sinusoid table: the exported model would silently compute something else. Use "
            "format=original or format=safetensors (load_backbone reads both)."
        )


def _write_hf(
    out: Path,
    hf_state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    card: Mapping[str, Any],
    notes: list[str],
) -> Path:
    """The HF folder, atomically: weights, ``config.json``, our card (with notes), preprocessor config, README."""
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in hf_state.items()}, str(folder / "model.safetensors"), {"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (folder / "surgvista_card.json").write_text(json.dumps({**card, "notes": notes}, indent=2) + "\n")
        write_hf_extras(folder, config, card)

    return atomic_write_dir(out, write)


def _check_targets(ckpt: Path, format: str, out: Path, overwrite: bool) -> None:
    """Refuse an export onto its own input, and onto existing files unless ``overwrite`` (before reading)."""
    targets = [out, out.with_suffix(".json")] if format == "safetensors" else [out]
    for target in targets:
        if ckpt.exists() and same_or_nested(target, ckpt):
            raise ExportError(f"out={target} would overwrite the input checkpoint ckpt={ckpt}; choose another out")
        refuse_existing(target, overwrite)
    if format != "hf" and out.is_dir():
        raise ExportError(f"out={out} is a folder; format={format} writes one file (give a file name)")


def hf_preprocessor_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``VideoMAEImageProcessor`` settings matching our evaluation transform (resize, centre crop, ImageNet norm)."""
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    size = config["image_size"]
    return {
        "image_processor_type": "VideoMAEImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 2,  # bilinear
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_DEFAULT_MEAN),
        "image_std": list(IMAGENET_DEFAULT_STD),
    }


def hf_model_card(config: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    """``README.md`` of an HF folder: what the model is, its training data and recipe, metrics when known, licence."""
    arch = config["architectures"][0]
    hp = card.get("hyper_parameters") or {}
    recipe = {k: hp[k] for k in ("base_lr", "min_lr", "batch_size", "warmup_epochs", "weight_decay", "layer_decay",
                                 "mixup", "cutmix", "label_smoothing", "dataset", "fps") if k in hp}
    data = [f"- `{m['path']}` ({m['split']}, sha256 `{m['sha256']}`)" for m in card.get("data_manifests") or []]
    metrics = [f"| {k} | {v} |" for k, v in (card.get("metrics") or {}).items()]
    labels = config.get("id2label")
    lines = [
        "---", "license: apache-2.0", "library_name: transformers",
        f"pipeline_tag: {'video-classification' if arch == 'VideoMAEForVideoClassification' else 'feature-extraction'}",
        "tags: [surgvista, surgical-video, videomae]", "---", "",
        f"# {arch} exported by surgvista", "",
        f"A {config['num_hidden_layers']}-layer, {config['hidden_size']}-wide ViT video encoder "
        f"({config['num_frames']} frames at {config['image_size']} px, tubelet {config['tubelet_size']}, patch "
        f"{config['patch_size']}) trained with surgvista and converted by `surgvista-export format=hf` from "
        f"`{card.get('source')}` (epoch {card.get('epoch', '?')}, step {card.get('global_step', '?')}).",
        "", "## Training data", "", *(data or ["Not recorded in the checkpoint."]), "",
        "## Recipe", "", *(f"- {k}: {v}" for k, v in recipe.items()), *([] if recipe else ["Not recorded."]), "",
    ]
    if labels:
        lines += ["## Labels", "", *(f"- {i}: {n}" for i, n in labels.items()), ""]
    lines += ["## Metrics", "", *(["| metric | value |", "|---|---|", *metrics] if metrics else ["Not known."]), ""]
    lines += ["## Licence", "", "Apache-2.0 (the code); the weights follow the licences of their training data.", ""]
    return "\n".join(lines)


def write_hf_extras(out: Path, config: Mapping[str, Any], card: Mapping[str, Any]) -> None:
    """``preprocessor_config.json`` and the ``README.md`` model card next to ``config.json``."""
    (out / "preprocessor_config.json").write_text(json.dumps(hf_preprocessor_config(config), indent=2) + "\n")
    (out / "README.md").write_text(hf_model_card(config, card))


def _parse(argv: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    bad = [a for a in argv if "=" not in a]
    if bad:
        raise SystemExit(f"arguments must be key=value, got {bad}\n{__doc__}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(argv))


def main(argv: list[str] | None = None) -> int:
    """``surgvista-export`` / ``python -m surgvista.export``: a bad input (or a refused export) is one ``error: ...``
    line and exit status 1 (``HYDRA_FULL_ERROR=1``: traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    args = _parse(argv)
    missing = [k for k in ("ckpt", "format", "out") if k not in args]
    if missing:
        raise SystemExit(f"missing argument(s) {missing}\n{__doc__}")
    known = set(inspect.signature(export).parameters)
    unknown = sorted(set(args) - known)
    if unknown:
        raise SystemExit(f"error: unknown argument(s) {unknown}; expected key=value with keys {sorted(known)}")
    with user_errors():
        path = export(args.pop("ckpt"), args.pop("format"), args.pop("out"), **args)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
