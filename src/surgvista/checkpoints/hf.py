"""Hugging Face VideoMAE export: the state dict, ``config.json`` and folder of a ``VideoMAE*`` class.

HF VideoMAE always builds a 1-D sinusoid table in code, so only ``sinusoid1d`` models are exported here: a 3-D
sin-cos (SurgVISTA/MVD) or learned table is refused rather than silently changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from surgvista.checkpoints.errors import ExportError
from surgvista.checkpoints.keys import to_hf_state
from surgvista.utils.io import atomic_write_dir
from surgvista.utils.owned_files import EXPORT, record_written

HF_ARCHS = ("auto", "model", "pretraining", "classification")
# Hyper-parameters the model card lists under "Recipe".
RECIPE_KEYS = (
    "base_lr",
    "min_lr",
    "batch_size",
    "warmup_epochs",
    "weight_decay",
    "layer_decay",
    "mixup",
    "cutmix",
    "label_smoothing",
    "dataset",
    "fps",
)


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
    out, notes = to_hf_state(state, hf_arch, mean_pool)
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


def check_hf_pos_kind(ckpt: Path, kind: str | None) -> None:
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


def write_hf(
    out: Path,
    hf_state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    card: Mapping[str, Any],
    notes: list[str],
) -> Path:
    """The HF folder, atomically: weights, ``config.json``, our card (with notes), preprocessor config, README card
    and the marker of what the export wrote (:mod:`surgvista.utils.owned_files`: ``overwrite`` replaces only it)."""
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in hf_state.items()}, str(folder / "model.safetensors"), {"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (folder / "surgvista_card.json").write_text(json.dumps({**card, "notes": notes}, indent=2) + "\n")
        (folder / "preprocessor_config.json").write_text(json.dumps(hf_preprocessor_config(config), indent=2) + "\n")
        (folder / "README.md").write_text(hf_model_card(config, card))
        record_written(folder, EXPORT, [p.name for p in folder.iterdir()])

    return atomic_write_dir(out, write)


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
    recipe = [f"- {k}: {hp[k]}" for k in RECIPE_KEYS if k in hp]
    data = [f"- `{m['path']}` ({m['split']}, sha256 `{m['sha256']}`)" for m in card.get("data_manifests") or []]
    metrics = [f"| {k} | {v} |" for k, v in (card.get("metrics") or {}).items()]
    labels = config.get("id2label")
    pipeline = "video-classification" if arch == "VideoMAEForVideoClassification" else "feature-extraction"
    lines = [
        f"---\nlicense: apache-2.0\nlibrary_name: transformers\npipeline_tag: {pipeline}",
        "tags: [surgvista, surgical-video, videomae]\n---\n",
        f"# {arch} exported by surgvista\n",
        f"A {config['num_hidden_layers']}-layer, {config['hidden_size']}-wide ViT video encoder "
        f"({config['num_frames']} frames at {config['image_size']} px, tubelet {config['tubelet_size']}, patch "
        f"{config['patch_size']}) trained with surgvista and converted by `surgvista-export format=hf` from "
        f"`{card.get('source')}` (epoch {card.get('epoch', '?')}, step {card.get('global_step', '?')}).",
        "\n## Training data\n",
        *(data or ["Not recorded in the checkpoint."]),
        "\n## Recipe\n",
        *(recipe or ["Not recorded."]),
        "",
    ]
    if labels:
        lines += ["## Labels\n", *(f"- {i}: {n}" for i, n in labels.items()), ""]
    lines += ["## Metrics\n", *(["| metric | value |", "|---|---|", *metrics] if metrics else ["Not known."]), ""]
    lines += ["## Licence\n", "Apache-2.0 (the code); the weights follow the licences of their training data.", ""]
    return "\n".join(lines)
