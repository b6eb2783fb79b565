"""Reading checkpoint files safely: the one reader every checkpoint, teacher file and feature cache goes through.

An unreadable file is one :class:`~surgvista.checkpoints.errors.CheckpointError` naming it and saying why; the advice
to load with ``weights_only=False`` is never passed on.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from surgvista.checkpoints.errors import CheckpointError

# How many non-finite tensors a refusal names.
NAMED_BAD_TENSORS = 3


def read_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Read a ``.pth``/``.ckpt``/``.bin`` (``weights_only=True``), a ``.safetensors`` file or an HF directory:
    ``(object, meta)``, ``meta`` holding the safetensors metadata (model card) or the HF ``config.json``."""
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
    """Tensors and metadata of a safetensors file; our model card (``surgvista_card``) parsed into ``meta['card']``."""
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
    anything else is one :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip reader), EOFError, KeyError/IndexError (other data)
        classes = _unsafe_globals(path, e) if isinstance(e, pickle.UnpicklingError) else []
        if classes:
            raise CheckpointError(
                f"{path}: contains pickled objects of type {', '.join(classes[:5])} that are not loaded for safety "
                "(only tensors and plain Python containers are read); save the state dict alone with "
                "torch.save(model.state_dict(), ...)"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_why_unreadable(path, e)})") from None


def _unsafe_globals(path: Path, exc: Exception) -> list[str]:
    """The pickled classes that ``weights_only`` refused (from the zip archive, else from the error message)."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:
            return []
    return re.findall(r"GLOBAL ([\w.]+)", str(exc))


def _why_unreadable(path: Path, exc: Exception) -> str:
    """Why ``path`` is not a ``torch.save`` file, read off its first bytes."""
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


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in nested dicts/lists/tuples with its dotted name (a DTensor: this rank's shard)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj.to_local() if hasattr(obj, "to_local") else obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}")


def nonfinite_tensors(obj: Any) -> list[str]:
    """Names of the floating-point tensors in ``obj`` (a state dict, or nested containers) holding NaN or inf."""
    return [
        name for name, t in _tensors(obj) if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]


def check_finite(state: Mapping[str, Any], source: str | Path) -> None:
    """Raise :class:`CheckpointError` naming ``source`` and the first floating tensors of ``state`` with NaN or inf
    values (the first with its count of bad values, up to :data:`NAMED_BAD_TENSORS` in all)."""
    bad = nonfinite_tensors({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})  # top level only
    if not bad:
        return
    count = int((~torch.isfinite(state[bad[0]])).sum())
    others = ""
    if len(bad) > 1:
        named = ", ".join(repr(k) for k in bad[1:NAMED_BAD_TENSORS])
        others = f", and so do {named}" + (f" ({len(bad)} tensors in all)" if len(bad) > NAMED_BAD_TENSORS else "")
    raise CheckpointError(
        f"{source}: tensor {bad[0]!r} holds {count} non-finite value(s) (NaN/inf){others}; the checkpoint is "
        "damaged or was saved after the training diverged"
    )


def _is_state(obj: Any) -> bool:
    """A non-empty mapping of tensors only."""
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap(obj: Any, source: str = "<mapping>") -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """Take the state dict out of its container: ``(state, container, extra)``; containers: ``lightning``
    (``student.``/``net.`` prefix removed), ``model`` (original / exported), ``module`` (DeepSpeed), ``model_state``,
    ``state_dict``, ``raw``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a checkpoint mapping, got {type(obj).__name__}")
    if isinstance(obj.get("state_dict"), Mapping) and ("pytorch-lightning_version" in obj or "epoch" in obj):
        return _unwrap_lightning(obj)
    extra: dict[str, Any] = {}
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


def _unwrap_lightning(obj: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """A Lightning checkpoint's network weights (``student.``/``net.`` prefix removed) and training metadata."""
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


class StateSource(NamedTuple):
    """A checkpoint read by :func:`read_state`."""

    name: str  # the path as given, or ``<mapping>``
    state: dict[str, torch.Tensor]  # finite, out of its container
    container: str  # see :func:`unwrap`
    extra: dict[str, Any]  # the container's metadata (hyper-parameters, epoch, ``args``, ...)
    meta: dict[str, Any]  # the file's metadata (safetensors card, HF ``config.json``)
    raw: Any  # the object as read (e.g. a Lightning checkpoint's ``callbacks``)


def read_state(source: str | Path | Mapping[str, Any]) -> StateSource:
    """Read a path (or take an already-loaded mapping), unwrap its state dict and check that it is finite."""
    if isinstance(source, (str, Path)):
        name = str(source)
        obj, meta = read_checkpoint(source)
    else:
        name, obj, meta = "<mapping>", source, {}
    state, container, extra = unwrap(obj, name)
    check_finite(state, name)
    return StateSource(name, state, container, extra, meta, obj)
