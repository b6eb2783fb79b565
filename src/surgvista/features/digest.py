"""Content digests and cache keys of the feature caches (:mod:`surgvista.features.frames` and
:mod:`surgvista.features.clips`).

A cache key is the first 16 hex digits of the sha256 of a JSON payload (keys sorted) of everything that determines
the cached values. Files and folders named in the payload enter by content, never by path, so a moved dataset or
checkpoint keeps its cache and a changed one gets a new cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from surgvista.data.manifest import VideoEntry
from surgvista.utils.io import sha256_file


def folder_digest(folder: str | Path) -> dict:
    """``{"dir_sha256": {relative path: sha256}}`` of every file under ``folder`` (e.g. an HF model folder)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return {"dir_sha256": {str(p.relative_to(folder)): sha256_file(p) for p in files}}


def content_digest(value: object, folders: bool = True) -> object:
    """``value`` (nested mappings and lists) with every string that names an existing file replaced by
    ``{"file_sha256": …}`` and, with ``folders``, every string that names a folder by :func:`folder_digest`."""
    if isinstance(value, Mapping):
        return {str(k): content_digest(v, folders) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [content_digest(v, folders) for v in value]
    if isinstance(value, str) and value:
        if folders and Path(value).is_dir():
            return folder_digest(value)
        if Path(value).is_file():
            return {"file_sha256": sha256_file(value)}
    return value


def payload_key(payload: Mapping) -> str:
    """The cache key of ``payload``: 16 hex digits of the sha256 of its sorted-keys JSON (other objects by ``str``)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def media_fingerprint(entry: VideoEntry) -> dict:
    """What identifies a video's frames independently of where the dataset lies on disk."""
    size = entry.source.stat().st_size if entry.source.is_file() else None
    return {
        "dataset": entry.dataset,
        "video_id": entry.video_id,
        "format": entry.format,
        "source": entry.source.name,
        "num_frames": entry.num_frames,
        "fps": entry.fps,
        "size": size,
        "sha256": entry.sha256,
    }
