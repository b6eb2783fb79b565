"""Key styles of video-ViT checkpoints and the one table between Hugging Face VideoMAE names and ours.

Styles (:func:`detect_style`): ``surgvista`` (our keys, which are also the official SurgVISTA ones), ``videomae``
(VideoMAE / MVD / UMT originals: ``encoder.``/``decoder.``/``encoder_to_decoder`` keys) and ``hf``
(``transformers`` VideoMAE: ``videomae.`` prefix, split query/key/value). :func:`to_canonical` maps any style to
our *canonical* keys (the :class:`~surgvista.models.student.SurgVISTAStudent` names plus the classifier's
``fc_norm``/``head``); :func:`to_hf_state` maps ours to HF. Both directions read the same tables below.

V-JEPA 2: our names are the official checkpoints' (after ``module.backbone.``); :func:`vjepa_from_hf` and
:func:`vjepa_to_hf` map them from and to ``transformers.VJEPA2Model``, both through the ``VJEPA_HF_*`` tables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from surgvista.checkpoints.errors import ExportError

# One transformer block (encoder and decoder alike), our module -> HF VideoMAE module. Not in the table: our fused
# ``attn.qkv.weight`` is HF's ``attention.attention.{query,key,value}.weight`` (in that order) and our
# ``attn.q_bias``/``attn.v_bias`` are its ``query.bias``/``value.bias`` (HF has no key bias).
HF_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
HF_QKV = ("query", "key", "value")
HF_ATTENTION = "attention.attention."
# Block stacks, our prefix -> HF prefix (the encoder's under ``videomae.`` in HF's pre-training/classification).
HF_ENCODER_BLOCKS = ("blocks.", "encoder.layer.")
HF_DECODER_BLOCKS = ("decoder_vid.blocks.", "decoder.decoder_layers.")
# Modules and parameters outside the blocks, ours -> HF, by the part of the HF model that holds them.
HF_ENCODER = {"patch_embed.proj": "embeddings.patch_embeddings.projection", "norm": "layernorm"}
HF_HEAD = {"fc_norm": "fc_norm", "head": "classifier"}
HF_DECODER = {
    "down_vid": "encoder_to_decoder",  # HF has no bias: ours must be zero to export, is set to zero on load
    "mask_token_vid": "mask_token",
    "decoder_vid.norm": "decoder.norm",
    "decoder_vid.head": "decoder.head",
}
HF_PREFIX = "videomae."
# Fixed position tables: never stored by HF (recomputed there), recomputed by our loader.
POSITION_TABLES = ("pos_embed", "pos_embed_img", "pos_embed_vid")

# Canonical key -> (the checkpoint's key, tensor), as :func:`to_canonical` returns it.
Canonical = dict[str, tuple[str, torch.Tensor]]

_FROM_HF = {hf: ours for table in (HF_ENCODER, HF_HEAD, HF_DECODER) for ours, hf in table.items()}
_FROM_HF_BLOCK = {hf: ours for ours, hf in HF_BLOCK.items()}


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    """``key`` renamed by ``table`` (a ``<module>.weight``/``.bias`` by its module, a bare parameter by itself)."""
    module, _, param = key.rpartition(".")
    if module:
        return f"{table[module]}.{param}" if module in table and param in ("weight", "bias") else None
    return table.get(key)


def _block(key: str, stack: str) -> tuple[str, str] | None:
    """``(index, rest)`` of a key in the block stack ``stack`` (``blocks.3.mlp.fc1.weight`` -> ``('3', ...)``)."""
    m = re.match(re.escape(stack) + r"(\d+)\.(.*)$", key)
    return (m[1], m[2]) if m else None


def block_depth(keys, prefix: str = "blocks.") -> int:
    """Number of ``<prefix><i>.`` blocks among ``keys`` (the largest index + 1; 0 without any)."""
    idx = [int(m[1]) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))]
    return max(idx) + 1 if idx else 0


# ------------------------------------------------------------------------------------------ any -> ours


def strip_wrappers(key: str) -> str:
    """``key`` without the ``module.``/``model.``/``backbone.``/``student.`` prefixes of training wrappers."""
    while key.startswith(("module.", "model.", "backbone.", "student.")):
        key = key.split(".", 1)[1]
    return key


def detect_style(keys: list[str]) -> str:
    """``hf`` (transformers VideoMAE), ``videomae`` (original encoder./decoder. layout) or ``surgvista``."""
    keys = [strip_wrappers(k) for k in keys]
    if any(k.startswith((HF_PREFIX, "embeddings.patch_embeddings.")) or f".{HF_ATTENTION}" in k for k in keys):
        return "hf"
    if any(k.startswith(("encoder.", "encoder_to_decoder", "decoder.")) for k in keys):
        return "videomae"
    return "surgvista"


def _hf_block_key(rest: str, dst: str, out: dict, qkv: dict, src_key: str, value: torch.Tensor) -> bool:
    """Place one HF block tensor (``rest`` after ``encoder.layer.<i>.``) under ``dst``; split q/k/v wait in ``qkv``."""
    m = re.match(re.escape(HF_ATTENTION) + r"(query|key|value)\.(weight|bias)$", rest)
    if m:
        qkv.setdefault(dst, {})[f"{m[1]}.{m[2]}"] = (src_key, value)
        return True
    for hf, ours in _FROM_HF_BLOCK.items():
        if rest.startswith(hf + "."):
            out[dst + ours + rest[len(hf) :]] = (src_key, value)
            return True
    return False


def _join_qkv(qkv: dict, out: dict, unexpected: list[str]) -> None:
    """HF's query/key/value weights -> our fused ``attn.qkv.weight``; their q/v biases -> ``attn.q_bias``/``v_bias``."""
    names = tuple(f"{n}.weight" for n in HF_QKV)
    for dst, parts in qkv.items():
        if not all(n in parts for n in names):
            unexpected += [src for src, _ in parts.values()]
            continue
        src = parts[names[0]][0].rsplit(names[0], 1)[0] + "{query,key,value}.weight"
        out[dst + "attn.qkv.weight"] = (src, torch.cat([parts[n][1] for n in names]))
        if "key.bias" in parts:
            unexpected.append(parts["key.bias"][0])
        for name in ("query", "value"):
            if f"{name}.bias" in parts:
                out[f"{dst}attn.{name[0]}_bias"] = parts[f"{name}.bias"]


def _hf_key(key: str, src: str, value: torch.Tensor, out: dict, qkv: dict) -> bool:
    """Place one HF tensor (``videomae.`` removed) under its canonical key; ``False`` if it has no place."""
    for ours_stack, hf_stack in (HF_ENCODER_BLOCKS, HF_DECODER_BLOCKS):
        found = _block(key, hf_stack)
        if found and _hf_block_key(found[1], f"{ours_stack}{found[0]}.", out, qkv, src, value):
            return True
    name = _rename(key, _FROM_HF)
    if name is None:
        return False
    out[name] = (src, value)
    return True


def _videomae_key(key: str) -> str:
    """The canonical key of a VideoMAE/MVD/UMT original's key (wrappers removed)."""
    if key in ("mask_token", "decoder_pos_embed"):
        return {"mask_token": "mask_token_vid", "decoder_pos_embed": "pos_embed_vid"}[key]
    for old, new in (("encoder_to_decoder.", "down_vid."), ("decoder.", "decoder_vid."), ("encoder.", "")):
        if key.startswith(old):
            return new + key.removeprefix(old)
    return key


def to_canonical(state: Mapping[str, torch.Tensor], style: str) -> tuple[Canonical, list[str]]:
    """Map a state dict of ``style`` to canonical keys: ``({canonical: (source_key, tensor)}, unmapped_keys)``."""
    out: Canonical = {}
    unmapped: list[str] = []
    qkv: dict[str, dict] = {}
    for src, value in state.items():
        key = strip_wrappers(src)
        if style == "hf":
            if not _hf_key(key.removeprefix(HF_PREFIX), src, value, out, qkv):
                unmapped.append(src)
        elif style == "videomae":
            out[_videomae_key(key)] = (src, value)
        else:
            out[key.removeprefix("encoder.")] = (src, value)
    _join_qkv(qkv, out, unmapped)
    return out, unmapped


# ------------------------------------------------------------------------------------------- ours -> HF


def _block_to_hf(rest: str, value: torch.Tensor, dst: str, out: dict[str, torch.Tensor]) -> None:
    """One of our block tensors (``rest`` after ``blocks.<i>.``) under its HF name(s) below ``dst``."""
    if rest == "attn.qkv.weight":
        for name, part in zip(HF_QKV, value.chunk(3)):
            out[f"{dst}{HF_ATTENTION}{name}.weight"] = part.clone()
    elif rest in ("attn.q_bias", "attn.v_bias"):
        out[f"{dst}{HF_ATTENTION}{'query' if rest[5] == 'q' else 'value'}.bias"] = value.clone()
    else:
        name = _rename(rest, HF_BLOCK)
        if name is None:
            raise ExportError(f"no Hugging Face VideoMAE equivalent for block key {rest!r}")
        out[dst + name] = value.clone()


def _stack_to_hf(
    key: str, value: torch.Tensor, stacks: tuple[str, str], table: Mapping[str, str], out: dict, pre=""
) -> bool:
    """Place one encoder or pixel-decoder tensor (a block of ``stacks``, else a ``table`` entry); ``False`` if none."""
    found = _block(key, stacks[0])
    if found:
        _block_to_hf(found[1], value, f"{pre}{stacks[1]}{found[0]}.", out)
        return True
    return _place(key, value, table, out, pre)


def _place(key: str, value: torch.Tensor, table: Mapping[str, str], out: dict, pre: str = "") -> bool:
    """``out[pre + HF name] = value`` (cloned) when ``table`` renames ``key``; ``False`` if it has no entry there."""
    name = _rename(key, table)
    if name is not None:
        out[pre + name] = value.clone()
    return name is not None


def to_hf_state(
    state: Mapping[str, torch.Tensor], hf_arch: str, mean_pool: bool
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every tensor under its HF ``hf_arch`` name (cloned); a key with no place there becomes a note."""
    pre = "" if hf_arch == "model" else HF_PREFIX
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for key, value in state.items():
        placed = (
            # HF recomputes the 1-D sinusoid tables; a mean-pooling classifier has fc_norm, no final norm
            key in POSITION_TABLES
            or (mean_pool and key.startswith("norm."))
            or _stack_to_hf(key, value, HF_ENCODER_BLOCKS, HF_ENCODER, out, pre)
            or (hf_arch == "classification" and _place(key, value, HF_HEAD, out))  # fc_norm, head -> classifier
            # down_vid.bias is checked to be zero before export: HF's encoder_to_decoder has no bias
            or (hf_arch == "pretraining" and key == "down_vid.bias")
            or (hf_arch == "pretraining" and _stack_to_hf(key, value, HF_DECODER_BLOCKS, HF_DECODER, out))
        )
        if not placed:
            notes.append(f"not exported (no place in HF {hf_arch}): {key}")
    return out, notes


# ------------------------------------------------------------------------------------------------ V-JEPA 2
# Our V-JEPA 2 names (the RoPE student with fused qkv and the Predictor: the official checkpoints' keys without
# ``module.backbone.``) -> ``transformers.VJEPA2Model``. Not in the tables: our fused ``attn.qkv.{weight,bias}``
# is HF's ``attention.{query,key,value}.{weight,bias}`` (in that order), and our ``mask_tokens.<i>`` ``(1, 1, d)``
# are the rows of HF's one ``predictor.embeddings.mask_tokens`` ``(n, 1, 1, d)``.
VJEPA_HF_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
VJEPA_HF_STACKS = (("blocks.", "encoder.layer."), ("predictor_blocks.", "predictor.layer."))
VJEPA_HF_MODULES = {
    "patch_embed.proj": "encoder.embeddings.patch_embeddings.proj",
    "norm": "encoder.layernorm",
    "predictor_embed": "predictor.embeddings.predictor_embeddings",
    "predictor_norm": "predictor.layernorm",
    "predictor_proj": "predictor.proj",
}
VJEPA_HF_MASK_TOKENS = "predictor.embeddings.mask_tokens"
# The head of ``VJEPA2ForVideoClassification``: not part of V-JEPA 2 pre-training, skipped when reading.
VJEPA_HF_HEAD_PREFIXES = ("pooler.", "classifier.")
_VJEPA_BLOCK = r"\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
# Every key of a V-JEPA 2 encoder / predictor in our (official) names.
VJEPA_ENCODER_KEY = re.compile(rf"^(patch_embed\.proj|norm|blocks{_VJEPA_BLOCK})\.(weight|bias)$")
VJEPA_PREDICTOR_KEY = re.compile(
    rf"^((predictor_embed|predictor_norm|predictor_proj|predictor_blocks{_VJEPA_BLOCK})\.(weight|bias)|mask_tokens\.\d+)$"
)
_FROM_VJEPA_HF = {hf: ours for ours, hf in VJEPA_HF_MODULES.items()}
_FROM_VJEPA_HF_BLOCK = {hf: ours for ours, hf in VJEPA_HF_BLOCK.items()}


def _vjepa_hf_key(key: str, value: torch.Tensor, out: dict, qkv: dict) -> bool:
    """Place one HF ``VJEPA2Model`` tensor under our name (q/k/v wait in ``qkv``); ``False`` if it has no place."""
    for ours_stack, hf_stack in VJEPA_HF_STACKS:
        found = _block(key, hf_stack)
        if found is None:
            continue
        dst = f"{ours_stack}{found[0]}."
        m = re.match(r"attention\.(query|key|value)\.(weight|bias)$", found[1])
        if m:
            qkv.setdefault(f"{dst}attn.qkv.{m[2]}", {})[m[1]] = (key, value)
            return True
        name = _rename(found[1], _FROM_VJEPA_HF_BLOCK)
        if name is not None:
            out[dst + name] = value
        return name is not None
    name = _rename(key, _FROM_VJEPA_HF)
    if name is not None:
        out[name] = value
    return name is not None


def vjepa_from_hf(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """An HF ``VJEPA2Model`` state dict (``vjepa2.`` prefix allowed) -> ``(encoder, predictor, unmapped_keys)``
    in our names; q/k/v are joined into our fused ``qkv``, the mask-token tensor split into ``mask_tokens.<i>``."""
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    qkv: dict[str, dict] = {}
    for src, value in state.items():
        key = src.removeprefix("vjepa2.")
        if key == VJEPA_HF_MASK_TOKENS:
            out.update({f"mask_tokens.{i}": token.clone() for i, token in enumerate(value)})
        elif not _vjepa_hf_key(key, value, out, qkv):
            unmapped.append(src)
    for dst, parts in qkv.items():
        if set(parts) == set(HF_QKV):
            out[dst] = torch.cat([parts[name][1] for name in HF_QKV])
        else:
            unmapped += [src for src, _ in parts.values()]
    encoder = {k: v for k, v in out.items() if VJEPA_ENCODER_KEY.match(k)}
    return encoder, {k: v for k, v in out.items() if k not in encoder}, unmapped


def vjepa_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our V-JEPA 2 encoder and predictor tensors (one mapping) under their ``VJEPA2Model`` names (cloned)."""
    out: dict[str, torch.Tensor] = {}
    tokens: dict[int, torch.Tensor] = {}
    for key, value in state.items():
        if re.fullmatch(r"mask_tokens\.\d+", key):
            tokens[int(key.rsplit(".", 1)[1])] = value
            continue
        for ours_stack, hf_stack in VJEPA_HF_STACKS:
            found = _block(key, ours_stack)
            if found and found[1].startswith("attn.qkv."):
                param = found[1].rsplit(".", 1)[1]
                for name, part in zip(HF_QKV, value.chunk(3)):
                    out[f"{hf_stack}{found[0]}.attention.{name}.{param}"] = part.clone()
                break
            if found and _place(found[1], value, VJEPA_HF_BLOCK, out, f"{hf_stack}{found[0]}."):
                break
        else:
            if not _place(key, value, VJEPA_HF_MODULES, out):
                raise ExportError(f"no transformers VJEPA2Model place for key {key!r}")
    if tokens:
        out[VJEPA_HF_MASK_TOKENS] = torch.stack([tokens[i] for i in sorted(tokens)]).clone()
    return out
