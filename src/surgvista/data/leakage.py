"""Leakage guard: refuse to pre-train on videos that a downstream validation/test split evaluates on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from surgvista.data.manifest import VideoEntry, read_manifest
from surgvista.utils.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
AUTO = "auto"  # exclude_from entry: the test split of every downstream dataset prepared under data_dir


class LeakageError(UserError, ValueError):
    """Pre-training videos that are also downstream evaluation videos."""


def resolve_split(spec: str, data_dir: str | Path | None) -> Path:
    """``cholec80_test`` → ``<data_dir>/cholec80/test.jsonl``; a path (``*.jsonl`` or containing ``/``) as is."""
    if spec.endswith(".jsonl") or "/" in spec:
        return Path(spec)
    name, sep, split = spec.rpartition("_")
    if not sep or not name or split not in SPLITS:
        raise ValueError(
            f"exclude_from entry {spec!r}: expected <dataset>_<split> with split in {SPLITS} "
            "(e.g. cholec80_test) or a manifest path"
        )
    if data_dir is None:
        raise ValueError(f"exclude_from entry {spec!r} needs data_dir to find <data_dir>/{name}/{split}.jsonl")
    return Path(data_dir) / name / f"{split}.jsonl"


def expand_auto(specs: Sequence[str], data_dir: str | Path | None) -> list[str]:
    """Replace ``auto`` by ``<dataset>_test`` for every downstream dataset whose test manifest exists under
    ``data_dir``; log which were checked and which are missing (not an error)."""
    specs = [str(s) for s in specs]
    if AUTO not in specs:
        return specs
    from surgvista.data.adapters import DOWNSTREAM_DATASETS

    root = Path(data_dir) if data_dir is not None else None
    found = [d for d in DOWNSTREAM_DATASETS if root is not None and (root / d / "test.jsonl").is_file()]
    missing = [d for d in DOWNSTREAM_DATASETS if d not in found]
    log.info(
        "leakage guard (exclude_from=auto): checking the test splits of %s; no %s/<dataset>/test.jsonl for %s",
        found or "no dataset", root, missing,
    )
    return [s for s in specs if s != AUTO] + [f"{d}_test" for d in found]


def find_overlap(
    train: Sequence[VideoEntry],
    held_out: Sequence[tuple[VideoEntry, Path]],
    aliases: dict[tuple[str, str], tuple[VideoEntry, Path]] | None = None,
) -> list[str]:
    """One line per training video that is a held-out video: same ``(dataset, video_id)`` (or an alias of a
    held-out video: the same recording in another dataset) or same sha256."""
    by_id = {(e.dataset.lower(), e.video_id): (e, m) for e, m in held_out}
    for key, hit in (aliases or {}).items():  # CholecT50 VID06 is Cholec80 video06 (_meta.same_video_as)
        by_id.setdefault((key[0].lower(), key[1]), hit)
    by_sha = {e.sha256.lower(): (e, m) for e, m in held_out if e.sha256}
    lines = []
    for e in train:
        hit = by_id.get((e.dataset.lower(), e.video_id))
        why = "same dataset and video id"
        if hit is None and e.sha256:
            hit, why = by_sha.get(e.sha256.lower()), "same sha256"
        if hit is not None:
            other, manifest = hit
            lines.append(
                f"{e.dataset}/{e.video_id} ({e.source}) is {other.dataset}/{other.video_id} of {manifest} ({why})"
            )
    return lines


def check_leakage(
    train: Sequence[VideoEntry],
    exclude_from: Sequence[str],
    data_dir: str | Path | None = None,
    allow_leakage: bool = False,
) -> list[str]:
    """Raise :class:`LeakageError` listing every training video found in an ``exclude_from`` split (with
    ``allow_leakage``: log a warning instead); return the overlap lines."""
    exclude_from = expand_auto(exclude_from or (), data_dir)
    if not exclude_from:
        return []
    held_out, aliases = [], {}
    for spec in exclude_from:
        path = resolve_split(str(spec), data_dir)
        manifest = read_manifest(path, check_media=False)
        held_out += [(e, path) for e in manifest.entries]
        same = manifest.meta.get("same_video_as") or {}
        aliases.update({tuple(same[e.video_id]): (e, path) for e in manifest.entries if e.video_id in same})
    lines = find_overlap(train, held_out, aliases)
    if not lines:
        log.info("leakage guard: none of %d pre-training videos is in %s", len(train), list(exclude_from))
        return lines
    listing = "\n  ".join(lines)
    if not allow_leakage:
        raise LeakageError(
            f"{len(lines)} pre-training video(s) are downstream evaluation videos (exclude_from={list(exclude_from)}):"
            f"\n  {listing}\nRemove them from the pre-training manifests, or set data.allow_leakage=true to train "
            "on them anyway."
        )
    log.warning(
        "data.allow_leakage=true: pre-training on %d downstream evaluation video(s):\n  %s", len(lines), listing
    )
    return lines
