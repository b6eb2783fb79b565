"""Load any supported checkpoint into our models, with layout detection and a key-diff report.

``load_backbone(source, model)`` accepts (spec pretrain §10–§11.1, downstream §5.3):

* our Lightning checkpoints (``state_dict`` with a ``student.`` prefix) and our exported files (original
  ``{'model': ...}`` or ``.safetensors`` with a model card);
* official SurgVISTA pre-training checkpoints (``{'model': ...}``, 255 keys), trimmed encoder-only files,
  DeepSpeed ``{'module': ...}`` files and raw state dicts;
* VideoMAE / MVD / UMT originals (fused ``qkv`` + ``q_bias``/``v_bias``; optional ``encoder.``/``backbone.``/
  ``module.``/``model.`` prefixes; ``encoder_to_decoder``/``decoder.*`` pre-training keys);
* Hugging Face ``VideoMAEModel`` / ``VideoMAEForPreTraining`` / ``VideoMAEForVideoClassification`` state dicts
  or ``save_pretrained`` directories (split query/key/value, ``videomae.`` prefix).

Every source is first mapped to the *canonical* key set of :class:`~surgvista.models.SurgVISTAStudent`
(``patch_embed``, ``blocks``, ``norm``, ``down_vid``/``decoder_vid``/``mask_token_vid``, ...) plus the
classifier's ``fc_norm``/``head``, then matched against the target model. Files are read with
``torch.load(weights_only=True)`` (``argparse.Namespace`` allow-listed for old checkpoints) or safetensors.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from surgvista.layers.position import sincos_3d, sinusoid_table
from surgvista.utils.errors import UserError

log = logging.getLogger(__name__)

POS_KINDS = ("sincos3d", "sinusoid1d", "learned")
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
FIXED_TABLES = ("pos_embed", "pos_embed_img", "pos_embed_vid")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded into the requested model (the message lists the keys)."""


@dataclass
class LoadReport:
    """What :func:`load_backbone` did: detected layout, and the key diff against the model."""

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
    groups: dict[str, int] = {}
    for k in keys:
        head = k.split(" ")[0].split(".")[0]
        groups[head] = groups.get(head, 0) + 1
    return [h if n == 1 else f"{h}.* (×{n})" for h, n in groups.items()]


# ----------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Read a ``.pth``/``.ckpt``/``.bin`` (``weights_only=True``), a ``.safetensors`` file or an HF directory.

    Returns ``(object, meta)``; ``meta`` holds safetensors metadata (model card) or the HF ``config.json``.
    """
    path = Path(path)
    meta: dict[str, Any] = {}
    if path.is_dir():
        cfg = path / "config.json"
        if cfg.is_file():
            try:
                meta["hf_config"] = json.loads(cfg.read_text(encoding="utf-8"))
            except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                raise CheckpointError(f"{cfg}: not a Hugging Face config.json ({_first_line(e)})") from None
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                obj, inner = read_checkpoint(path / name)
                return obj, {**inner, **meta}
        raise FileNotFoundError(f"{path}: directory without model.safetensors or pytorch_model.bin")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, meta)
    return torch_load(path), meta


def _read_safetensors(path: Path, meta: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # SafetensorError, OSError: the file is not what its name says
        raise CheckpointError(f"{path}: not a safetensors file ({_first_line(e)})") from None
    meta.update(raw)
    if "surgvista_card" in raw:
        meta["card"] = json.loads(raw["surgvista_card"])
    return state, meta


def torch_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` (``argparse.Namespace`` allowed, as old checkpoints pickle it);
    anything else is one :class:`CheckpointError` naming the file: ``<path>: not a PyTorch checkpoint (...)`` or
    ``<path>: contains pickled objects of type X that are not loaded for safety``. Every checkpoint, teacher file
    and feature cache is read through this function."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        classes = _unsafe_globals(path, e)
        if classes:
            raise CheckpointError(
                f"{path}: contains pickled objects of type {', '.join(classes[:5])} that are not loaded for safety "
                "(only tensors and plain Python containers are read); save the state dict alone with "
                "torch.save(model.state_dict(), ...)"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_why_unreadable(path, e)})") from None
    except Exception as e:  # RuntimeError (zip reader), EOFError, KeyError/IndexError (text or other data)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_why_unreadable(path, e)})") from None


def _unsafe_globals(path: Path, exc: Exception) -> list[str]:
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:
            return []
    return re.findall(r"GLOBAL ([\w.]+)", str(exc))


def _why_unreadable(path: Path, exc: Exception) -> str:
    with path.open("rb") as f:
        head = f.read(16)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        return "truncated or corrupt zip archive: the end of the file is missing"
    if head.startswith(b"PK"):
        return f"corrupt zip archive: {_first_line(exc)}"
    return f"not written by torch.save; the file starts with {head!r}"


def _first_line(exc: BaseException) -> str:
    """The first line of an exception message, cut before any advice to load unsafely."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". This")[0].split(" Re-running")[0][:200]


def check_finite(state: Mapping[str, Any], source: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the first floating tensor of ``state`` with NaN or inf values."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{source}: tensor {key!r} holds {bad} non-finite value(s) (NaN/inf); the checkpoint is damaged "
                "or was saved after the training diverged"
            )


def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap(obj: Any, source: str = "<mapping>") -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """Take the state dict out of its container: ``(state, container, extra)``.

    Containers: ``lightning`` (``state_dict`` + ``student.``/``net.`` prefix), ``model`` (original / exported),
    ``module`` (DeepSpeed), ``model_state``, ``raw``.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a checkpoint mapping, got {type(obj).__name__}")
    extra: dict[str, Any] = {}
    if isinstance(obj.get("state_dict"), Mapping) and ("pytorch-lightning_version" in obj or "epoch" in obj):
        sd = obj["state_dict"]
        keys = ("hyper_parameters", "datamodule_hyper_parameters", "epoch", "global_step", "class_names")
        extra = {k: obj[k] for k in keys if k in obj}
        for prefix in ("student.", "net."):  # pre-training (student) or fine-tuning (net) LightningModule
            if any(k.startswith(prefix) for k in sd):
                other = sorted(k for k in sd if not k.startswith(prefix))
                if other:
                    extra["lightning_other_keys"] = other
                return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}, "lightning", extra
        return dict(sd), "lightning", extra
    for container in ("model", "module", "model_state", "state_dict"):
        if _is_state(obj.get(container)):
            if isinstance(obj.get("args"), argparse.Namespace):
                extra["args"] = vars(obj["args"])
            return dict(obj[container]), container, extra
    if _is_state(obj):
        return dict(obj), "raw", extra
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and len(tensors) >= len(obj) - 2:
        return tensors, "raw", extra
    raise CheckpointError(
        f"{source}: no state dict found; top-level keys {sorted(map(str, obj))[:20]} (expected 'state_dict', "
        "'model', 'module' or a flat mapping of tensors)"
    )


# -------------------------------------------------------------------------------------- key conventions

_HF_LAYER = [
    ("attention.output.dense.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
]


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for pre in ("module.", "model.", "backbone.", "student."):
            if key.startswith(pre):
                key, changed = key[len(pre) :], True
    return key


def detect_style(keys: list[str]) -> str:
    """``hf`` (transformers VideoMAE), ``videomae`` (original encoder./decoder. layout) or ``surgvista``."""
    keys = [_strip_wrappers(k) for k in keys]
    if any(k.startswith(("videomae.", "embeddings.patch_embeddings.")) or ".attention.attention." in k for k in keys):
        return "hf"
    if any(k.startswith(("encoder.", "encoder_to_decoder", "decoder.")) for k in keys):
        return "videomae"
    return "surgvista"


def _map_hf_layer(rest: str, dst: str, out: dict, qkv: dict, src_key: str, value: torch.Tensor) -> bool:
    m = re.match(r"attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
    if m:
        qkv.setdefault(dst, {})[f"{m[1]}.{m[2]}"] = (src_key, value)
        return True
    for old, new in _HF_LAYER:
        if rest.startswith(old):
            out[dst + new + rest[len(old) :]] = (src_key, value)
            return True
    return False


def _finish_qkv(qkv: dict, out: dict, unexpected: list[str]) -> None:
    for dst, parts in qkv.items():
        names = ("query.weight", "key.weight", "value.weight")
        if not all(n in parts for n in names):
            unexpected += [src for src, _ in parts.values()]
            continue
        src = parts["query.weight"][0].rsplit("query.weight", 1)[0] + "{query,key,value}.weight"
        out[dst + "attn.qkv.weight"] = (src, torch.cat([parts[n][1] for n in names]))
        if "key.bias" in parts:
            unexpected.append(parts["key.bias"][0])
        if "query.bias" in parts:
            out[dst + "attn.q_bias"] = parts["query.bias"]
        if "value.bias" in parts:
            out[dst + "attn.v_bias"] = parts["value.bias"]


def to_canonical(
    state: Mapping[str, torch.Tensor], style: str
) -> tuple[dict[str, tuple[str, torch.Tensor]], list[str]]:
    """Map a state dict of ``style`` to canonical keys: ``({canonical: (source_key, tensor)}, unmapped_keys)``."""
    out: dict[str, tuple[str, torch.Tensor]] = {}
    unmapped: list[str] = []
    qkv: dict[str, dict] = {}
    for src, value in state.items():
        key = _strip_wrappers(src)
        if style == "hf":
            key = key.removeprefix("videomae.")
            if key.startswith("embeddings.patch_embeddings.projection."):
                out["patch_embed.proj." + key.rsplit(".", 1)[1]] = (src, value)
                continue
            m = re.match(r"encoder\.layer\.(\d+)\.(.*)$", key)
            if m and _map_hf_layer(m[2], f"blocks.{m[1]}.", out, qkv, src, value):
                continue
            m = re.match(r"decoder\.decoder_layers\.(\d+)\.(.*)$", key)
            if m and _map_hf_layer(m[2], f"decoder_vid.blocks.{m[1]}.", out, qkv, src, value):
                continue
            simple = {
                "layernorm.weight": "norm.weight",
                "layernorm.bias": "norm.bias",
                "fc_norm.weight": "fc_norm.weight",
                "fc_norm.bias": "fc_norm.bias",
                "classifier.weight": "head.weight",
                "classifier.bias": "head.bias",
                "encoder_to_decoder.weight": "down_vid.weight",
                "encoder_to_decoder.bias": "down_vid.bias",
                "mask_token": "mask_token_vid",
            }
            if key in simple:
                out[simple[key]] = (src, value)
            elif re.match(r"decoder\.(norm|head)\.(weight|bias)$", key):
                out["decoder_vid." + key.removeprefix("decoder.")] = (src, value)
            else:
                unmapped.append(src)
            continue
        if style == "videomae":
            if key.startswith("encoder_to_decoder."):
                key = "down_vid." + key.removeprefix("encoder_to_decoder.")
            elif key == "mask_token":
                key = "mask_token_vid"
            elif key.startswith("decoder."):
                key = "decoder_vid." + key.removeprefix("decoder.")
            elif key == "decoder_pos_embed":
                key = "pos_embed_vid"
            else:
                key = key.removeprefix("encoder.")
        else:
            key = key.removeprefix("encoder.")
        out[key] = (src, value)
    _finish_qkv(qkv, out, unmapped)
    return out, unmapped


# ------------------------------------------------------------------------------------- position tables


def candidate_grids(num_tokens: int) -> list[tuple[int, int, int]]:
    """Every ``(T', S, S)`` grid with square frames and ``T'·S·S = num_tokens``."""
    out = []
    for t in range(1, num_tokens + 1):
        if num_tokens % t == 0:
            s = math.isqrt(num_tokens // t)
            if s * s * t == num_tokens:
                out.append((t, s, s))
    return out


def guess_grid(num_tokens: int, like: tuple[int, int, int] | None = None) -> tuple[int, int, int] | None:
    """The token grid of a ``num_tokens`` table: ``like``'s frame size or T' if they fit, else the only candidate."""
    if like:
        if num_tokens % (like[1] * like[2]) == 0:
            return (num_tokens // (like[1] * like[2]), like[1], like[2])
        if num_tokens % like[0] == 0:
            s = math.isqrt(num_tokens // like[0])
            if s * s * like[0] == num_tokens:
                return (like[0], s, s)
    cands = candidate_grids(num_tokens)
    if like and cands:  # neither axis kept: the grid with the closest T'/H' proportion
        return min(cands, key=lambda g: abs(math.log(g[0] / g[1]) - math.log(like[0] / like[1])))
    return cands[0] if len(cands) == 1 else None


def classify_table(table: torch.Tensor, grid: tuple[int, int, int] | None = None) -> str:
    """``sincos3d`` / ``sinusoid1d`` when ``table`` is that fixed table (to 1e-4), else ``learned``.

    ``grid`` is tried first for ``sincos3d``, then every square-frame grid of the table's length.
    """
    return classify_table_grid(table, grid)[0]


def classify_table_grid(table: torch.Tensor, grid=None) -> tuple[str, tuple[int, int, int] | None]:
    """As :func:`classify_table`, also returning the grid a ``sincos3d`` table was matched on."""
    n, dim = table.shape[-2:]
    t = table.detach().float().reshape(n, dim).cpu()
    if torch.allclose(t, sinusoid_table(n, dim)[0], atol=1e-4):
        return "sinusoid1d", grid
    if dim % 16 == 0:
        for g in ([grid] if grid else []) + candidate_grids(n):
            if g[0] * g[1] * g[2] == n and torch.allclose(t, sincos_3d(dim, g)[0], atol=1e-4):
                return "sincos3d", g
    return "learned", grid


def interpolate_pos_embed(table: torch.Tensor, src_grid: tuple[int, int, int], dst_grid: tuple[int, int, int]):
    """Resize a learned ``(1, T·H·W, D)`` table: bicubic over (H, W) per frame, then linear over T."""
    t0, h0, w0 = src_grid
    t1, h1, w1 = dst_grid
    dim = table.shape[-1]
    if table.shape[-2] != t0 * h0 * w0:
        raise CheckpointError(f"pos_embed has {table.shape[-2]} tokens, not the {t0}x{h0}x{w0} grid given")
    from timm.layers import resample_abs_pos_embed

    x = table.detach().float().reshape(t0, h0 * w0, dim)
    if (h0, w0) != (h1, w1):  # timm's resampler per frame; no antialiasing, as the reference's F.interpolate
        frames = [resample_abs_pos_embed(f[None], [h1, w1], [h0, w0], num_prefix_tokens=0, antialias=False) for f in x]
        x = torch.cat(frames)
    x = x.reshape(t0, h1, w1, dim).permute(3, 1, 2, 0).reshape(1, dim * h1 * w1, t0)  # (1, D·H·W, T)
    if t0 != t1:
        x = F.interpolate(x, size=t1, mode="linear", align_corners=False)
    return x.reshape(dim, h1, w1, t1).permute(3, 1, 2, 0).reshape(1, t1 * h1 * w1, dim).to(table.dtype)


def fixed_table(kind: str, dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """The fixed table of ``kind`` for ``grid``."""
    if kind == "sincos3d":
        return sincos_3d(dim, grid)
    return sinusoid_table(grid[0] * grid[1] * grid[2], dim)


# ----------------------------------------------------------------------------------------------- loading


def _model_grid(model: nn.Module) -> tuple[int, int, int]:
    grid = getattr(model, "token_grid", None)
    if grid is None:
        raise CheckpointError(
            f"{type(model).__name__} has no token_grid; expected a SurgVISTAStudent or VideoClassifier"
        )
    return tuple(grid)


def load_backbone(
    source: str | Path | Mapping[str, Any],
    model: nn.Module,
    *,
    strict: bool = True,
    layout: str | None = None,
    pos_embed_kind: str | None = None,
    load_head: bool | None = None,
    source_grid: tuple[int, int, int] | None = None,
) -> LoadReport:
    """Load the encoder (and whatever else the model has) of ``source`` into ``model``; return a :class:`LoadReport`.

    Args:
        source: a path (``.pth``/``.ckpt``/``.bin``/``.safetensors``/HF directory) or an already-loaded mapping.
        model: a :class:`~surgvista.models.SurgVISTAStudent` or :class:`~surgvista.models.VideoClassifier`.
        strict: raise :class:`CheckpointError` on any missing, unexpected or wrong-shape key and on a position
            embedding kind that disagrees with the model's; ``False`` loads what matches and logs the diff.
            A checkpoint of another architecture (width, depth, patch size) is an error either way.
        layout: force the key style (``surgvista``, ``videomae``, ``hf``) instead of detecting it.
        pos_embed_kind: declare the checkpoint's position table kind when it cannot be seen in the file
            (e.g. an MVD original without ``pos_embed``: ``"sincos3d"``).
        load_head: load ``fc_norm``/``head`` from a fine-tuned source (default: when present and shapes match).
        source_grid: the checkpoint's token grid, to interpolate a learned table (default: guessed).
    """
    report, canon, style = _canonical_source(source, layout)
    target = model.state_dict()
    grid = _model_grid(model)
    kind = getattr(model, "pos_embed_kind", "sincos3d")
    src_kind = _source_pos_kind(canon, style, pos_embed_kind, source_grid, grid, report)
    _check_pos_kind(report, src_kind, kind, strict)
    new = _position_tables(canon, target, kind, src_kind, grid, source_grid, report)
    new.update(_head_and_pooling_norm(canon, target, load_head, report))
    # q/k/v bias conventions (divided q_bias/v_bias vs fused qkv.bias).
    _convert_qkv_bias(canon, target, report)
    shape_errors = _match_remaining(canon, target, new, report)
    _zero_decoder_bias(new, target, style, report)
    _finish_report(report, canon, target, new, shape_errors, strict)
    state_to_load = {**target, **{k: v.to(target[k].dtype) for k, v in new.items()}}
    model.load_state_dict(state_to_load, strict=True)
    return report


def _read_source(
    source: str | Path | Mapping[str, Any],
) -> tuple[str, dict[str, torch.Tensor], str, dict[str, Any], dict[str, Any]]:
    """Read a path (or take a mapping) and unwrap its finite state dict: ``(name, state, container, extra, meta)``."""
    if isinstance(source, (str, Path)):
        name = str(source)
        obj, meta = read_checkpoint(source)
    else:
        name, obj, meta = "<mapping>", source, {}
    state, container, extra = unwrap(obj, name)
    check_finite(state, name)
    return name, state, container, extra, meta


def _canonical_source(
    source: str | Path | Mapping[str, Any], layout: str | None
) -> tuple[LoadReport, dict[str, tuple[str, torch.Tensor]], str]:
    """Read ``source``, settle its key style and map it to canonical keys: ``(report, canon, style)``."""
    name, state, container, extra, meta = _read_source(source)
    style = layout or ("hf" if "hf_config" in meta else detect_style(list(state)))
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
    return report, canon, style


def _source_pos_kind(
    canon: Mapping[str, tuple[str, torch.Tensor]],
    style: str,
    declared: str | None,
    source_grid: tuple[int, int, int] | None,
    grid: tuple[int, int, int],
    report: LoadReport,
) -> str | None:
    """The checkpoint's position-table kind: declared, read off its ``pos_embed``, or implied by its layout."""
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
    elif src_kind is None and style in ("hf", "videomae"):
        src_kind = "sinusoid1d"  # HF and VideoMAE/UMT originals never store their (1-D) table
    elif src_kind is None and ("down_img.weight" in canon or "pos_embed_img" in canon):
        src_kind = "sincos3d"
    if src_kind is not None and src_kind not in POS_KINDS:
        raise ValueError(f"unknown pos_embed_kind {src_kind!r}; expected one of {POS_KINDS}")
    return src_kind


def _position_tables(
    canon: dict[str, tuple[str, torch.Tensor]],
    target: Mapping[str, torch.Tensor],
    kind: str,
    src_kind: str | None,
    grid: tuple[int, int, int],
    source_grid: tuple[int, int, int] | None,
    report: LoadReport,
) -> dict[str, torch.Tensor]:
    """Recompute fixed tables / interpolate a learned one; pops them from ``canon``, returns the model's tables."""
    new: dict[str, torch.Tensor] = {}
    for tkey in FIXED_TABLES:
        if tkey not in canon and tkey not in target:
            continue
        item = canon.pop(tkey, None)
        if tkey not in target:  # classifier with a fixed (non-persistent) table
            if item is not None:
                report.ignored.append(item[0])
            continue
        if kind == "learned" and tkey == "pos_embed":
            new[tkey] = _learned_table(item, src_kind, target[tkey], grid, source_grid, report)
            continue
        # Fixed table in the state dict (student): the model's own table for its geometry.
        new[tkey] = target[tkey].clone()
        if item is not None:
            report.ignored.append(item[0])
        else:
            report.expected_missing.append(tkey)
    if kind == "learned":
        report.pos_embed = report.pos_embed or "learned table"
    else:
        report.pos_embed = f"fixed {kind} table for grid {grid}" + (f" (checkpoint: {src_kind})" if src_kind else "")
    return new


def _head_and_pooling_norm(
    canon: dict[str, tuple[str, torch.Tensor]],
    target: Mapping[str, torch.Tensor],
    load_head: bool | None,
    report: LoadReport,
) -> dict[str, torch.Tensor]:
    """Head and pooling norm of a classifier: loaded together, only when the head fits (or ``load_head=True``)."""
    names = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")
    has_head = "head.weight" in target
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
    if has_head and "norm.weight" in canon and "norm.weight" not in target:
        for k in ("norm.weight", "norm.bias"):
            if k in canon:
                report.ignored.append(canon.pop(k)[0])
    return new


def _match_remaining(
    canon: Mapping[str, tuple[str, torch.Tensor]],
    target: Mapping[str, torch.Tensor],
    new: dict[str, torch.Tensor],
    report: LoadReport,
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


def _zero_decoder_bias(
    new: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], style: str, report: LoadReport
) -> None:
    """HF / VideoMAE encoder_to_decoder has no bias: ours is zero then."""
    if "down_vid.bias" in target and "down_vid.weight" in new and "down_vid.bias" not in new and style != "surgvista":
        new["down_vid.bias"] = torch.zeros_like(target["down_vid.bias"])
        report.expected_missing.append("down_vid.bias (VideoMAE/HF encoder_to_decoder has no bias: set to 0)")


def _finish_report(
    report: LoadReport,
    canon: Mapping[str, tuple[str, torch.Tensor]],
    target: Mapping[str, torch.Tensor],
    new: Mapping[str, torch.Tensor],
    shape_errors: list[str],
    strict: bool,
) -> None:
    """List what stays missing, refuse another architecture or a failed strict load, else log the diff."""
    report.mismatched += shape_errors
    for key in target:
        if key not in new and not any(e.split(" ")[0] == key for e in report.expected_missing):
            report.missing.append(key)
    c_depth, m_depth = block_depth(canon), block_depth(target)
    if shape_errors or (c_depth and m_depth and c_depth != m_depth):
        _raise_architecture(report, canon, target, report.source)
    if strict and not report.ok:
        raise CheckpointError(f"strict load failed (pass strict=False to load what matches):\n{report}")
    if not strict and not report.ok:
        log.warning("%s", report)
    else:
        log.info("%s", report)


def _check_pos_kind(report: LoadReport, src_kind: str | None, kind: str, strict: bool) -> None:
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
    dim = current.shape[-1]
    if item is None:
        if src_kind in ("sincos3d", "sinusoid1d"):
            report.pos_embed = f"learned table initialised from the checkpoint's {src_kind} table for grid {grid}"
            report.expected_missing.append("pos_embed")
            return fixed_table(src_kind, dim, grid)
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


def _convert_qkv_bias(canon: dict, target: Mapping[str, torch.Tensor], report: LoadReport) -> None:
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


def block_depth(keys, prefix: str = "blocks.") -> int:
    """Number of ``<prefix><i>.`` blocks among ``keys`` (the largest index + 1; 0 without any)."""
    idx = [int(m[1]) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))]
    return max(idx) + 1 if idx else 0


def _raise_architecture(report: LoadReport, canon: dict, target: Mapping, name: str) -> None:
    lines = [f"{name}: checkpoint architecture does not match the model ({report.layout}):"]
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


# ------------------------------------------------------------------------------------- run checkpoints


def check_run_checkpoint(path: str | Path, model: nn.Module, key: str = "ckpt_path") -> None:
    """Before resuming or evaluating: ``path`` is a readable Lightning checkpoint with finite weights, written by
    the same kind of module as ``model`` (else one :class:`CheckpointError` naming both module classes)."""
    path = Path(path)
    if path.is_dir():  # a sharded (distributed checkpoint) folder: read by the strategy itself
        return
    if not path.is_file():
        raise FileNotFoundError(f"{key} not found: {path}")
    obj = torch_load(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
        raise CheckpointError(
            f"{path}: not a Lightning checkpoint written by train.py (no 'state_dict'); {key} resumes or evaluates "
            "a run's checkpoints/*.ckpt; to start from other weights use model.ckpt=<file>"
        )
    state = obj["state_dict"]
    check_finite(state, path)
    target = model.state_dict()
    if not target:  # built lazily from the data (TeCNO): Lightning's strict load checks it later
        return
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    theirs, ours = _module_of(path, state), type(model).__name__
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise CheckpointError(
            f"{path}: a checkpoint of {theirs}, but the configured model is {ours} ({len(missing)} missing and "
            f"{len(unexpected)} unexpected keys, e.g. {example!r}); use the experiment that wrote it "
            "(its config.yaml), or load its backbone with model.ckpt=<file>"
        )
    wrong = [k for k in target if tuple(target[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{path}: {k} has shape {tuple(state[k].shape)} in the checkpoint of {theirs} but "
            f"{tuple(target[k].shape)} in the configured {ours}; another task, class count or preset?"
        )


def _module_of(path: Path, state: Mapping[str, Any]) -> str:
    """The module class that wrote a run checkpoint: from the run's ``config.yaml``, else guessed from its keys."""
    for cfg in (path.parent.parent / "config.yaml", path.parent / "config.yaml"):
        if cfg.is_file():
            from omegaconf import OmegaConf

            try:
                target = OmegaConf.select(OmegaConf.load(cfg), "model._target_")
            except Exception:
                target = None
            if target:
                return str(target).rsplit(".", 1)[-1]
    heads = sorted({k.split(".")[0] for k in state})
    if heads == ["student"]:
        return "a pre-training module (student.* weights)"
    if heads == ["net"]:
        return "a fine-tuning module (net.* weights)"
    return f"a model with weights {heads[:5]}"
