"""Clip-ready streaming shards (litdata) from any manifest, for object storage and many nodes.

    python -m surgvista.shards data/cholec80/pretrain.jsonl data/heichole/pretrain.jsonl --out /data/shards/pre

One shard item per sample of :class:`~surgvista.data.clips.VideoClipDataset` over the same manifests (same
``num_frames``, ``sampling_rate``, ``anchor_stride``; same sample ``index``): the clip's distinct frames as encoded
images, plus the clip's frame order. Frames of ``frames`` folders are stored byte for byte (reading a shard gives
the pixels of the frame folder); frames of ``video`` files are decoded once and stored as JPEG (``--quality``).
``--out`` is a folder or an object-storage URI (``s3://bucket/prefix``: litdata uploads the chunks). Writing is
parallel (``--workers``) and resumable (``--resume`` continues an interrupted run). Clips whose media fail to decode
are listed and stop the run (``--on-bad-video error``: the folder is left without ``index.json``) or are left out
(``skip``). ``data=pretrain_stream`` reads the shards (``surgvista.data.stream``). Storage: about ``num_frames``
distinct frames per sample at 1 fps.
"""

from __future__ import annotations

import functools
import io
import logging
import multiprocessing
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from surgvista.data.clips import BAD_MEDIA_ERRORS, VideoClipDataset
from surgvista.data.leakage import check_leakage
from surgvista.data.manifest import VideoEntry, frame_files, write_manifest

log = logging.getLogger("surgvista.shards")
SHARD_VERSION = 1
VIDEOS = "videos.jsonl"  # beside the chunks: the videos whose clips the shards hold


class ShardWriteError(RuntimeError):
    """Shards that were not completely written."""


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def _folder_files(folder: Path) -> list[Path]:
    return frame_files(folder)


def clip_item(dataset: VideoClipDataset, quality: int, errors: str, index: int) -> dict | None:
    """Shard item of sample ``index``: its distinct frames encoded back to back, their sizes and the clip order.

    Bad media are recorded as ``<errors>/<index>.txt`` and give ``None`` (litdata writes nothing): an exception
    would go through litdata's worker-failure path, which leaves its helper processes behind.
    """
    entry, anchor = dataset.locate(index)
    ids = dataset.clip_frame_ids(anchor)
    unique = sorted(set(ids))
    try:
        if entry.format == "frames":
            blobs = [_folder_files(entry.source)[i].read_bytes() for i in unique]
        else:
            blobs = [encode_jpeg(f, quality) for f in dataset.reader.read(entry, unique)]
    except BAD_MEDIA_ERRORS as e:
        Path(errors, f"{index}.txt").write_text(f"{entry.dataset}/{entry.video_id}: {e}")
        return None
    return {
        "frames": b"".join(blobs),
        "sizes": np.array([len(b) for b in blobs], np.int64),
        "order": np.array([unique.index(i) for i in ids], np.int64),
        "clip": np.array([SHARD_VERSION, index, anchor, dataset.sampling_rate], np.int64),
        "video": f"{entry.dataset}/{entry.video_id}",
    }


def _check_out(out: str, overwrite: bool, resume: bool) -> None:
    if "://" in out:
        return  # object storage: litdata's optimize refuses a non-empty prefix unless mode="overwrite"
    path = Path(out)
    if resume and not overwrite and (path / "index.json").is_file():
        raise FileExistsError(f"shard folder {path} holds finished shards (index.json): nothing to resume")
    if path.exists() and any(path.iterdir()) and not (overwrite or resume):
        raise FileExistsError(f"shard folder {path} is not empty; pass --overwrite to replace it (or --resume)")


def write_shards(
    manifests: Sequence[str | Path],
    out: str,
    *,
    num_frames: int = 16,
    sampling_rate: int = 4,
    anchor_stride: int = 1,
    backend: str = "pyav",
    quality: int = 90,
    chunk_bytes: str = "64MB",
    workers: int = 1,
    on_bad_video: str = "error",
    min_video_frames: int = 1,
    overwrite: bool = False,
    resume: bool = False,
    exclude_from: Sequence[str] = (),
    data_dir: str | None = None,
    allow_leakage: bool = False,
    storage_options: dict | None = None,
) -> int:
    """Write the clips of ``manifests`` as litdata shards under ``out``; returns the number of clips written."""
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    _check_out(str(out), overwrite, resume)
    dataset = VideoClipDataset(
        list(manifests),
        transform=np.asarray,
        num_frames=num_frames,
        sampling_rate=sampling_rate,
        backend=backend,
        anchor_stride=anchor_stride,
        on_bad_video=on_bad_video,
        min_video_frames=min_video_frames,
    )
    check_leakage(dataset.entries, list(exclude_from), data_dir, allow_leakage)
    n = len(dataset)
    log.info("writing %d clips (%d videos) to %s with %d worker(s)", n, len(dataset.entries), out, workers)
    options = {"chunk_bytes": chunk_bytes, "num_workers": workers, "mode": "overwrite" if overwrite else None,
               "storage_options": dict(storage_options or {})}  # fmt: skip
    problems = _optimize(dataset, str(out), quality, options)
    _check_written(str(out), n - len(problems))
    write_videos(str(out), dataset.entries, storage_options)
    _report_bad_clips(str(out), problems, on_bad_video)
    return n - len(problems)


def _optimize(dataset: VideoClipDataset, out: str, quality: int, options: dict) -> list[str]:
    """Run litdata's ``optimize`` over every sample of ``dataset`` (``options``: its chunk, worker, mode and storage
    arguments); returns the problems of the clips left out for bad media."""
    from litdata import optimize

    start_method = multiprocessing.get_start_method(allow_none=True)
    with tempfile.TemporaryDirectory(prefix="surgvista-shards-") as errors:
        try:
            optimize(
                fn=functools.partial(clip_item, dataset, quality, errors),
                inputs=list(range(len(dataset))),
                output_dir=out,
                use_checkpoint=True,  # always: an interrupted run can then be resumed
                reorder_files=False,
                **options,
            )
        except RuntimeError as e:  # litdata's "We found the following error <worker traceback>"
            lines = [line for line in str(e).splitlines() if line[:1].isalpha() and ": " in line]
            raise ShardWriteError(
                f"writing shards to {out} failed: {' <- '.join(lines[-2:]) or e}; fix it and run the same command "
                "with --resume"
            ) from e
        finally:  # optimize forces the "spawn" start method process-wide; DataLoaders started later would inherit it
            multiprocessing.set_start_method(start_method, force=True)
        bad = sorted(Path(errors).glob("*.txt"), key=lambda p: int(p.stem))
        return [p.read_text() for p in bad]


def _report_bad_clips(out: str, problems: list[str], on_bad_video: str) -> None:
    """Clips left out for bad media: an error (the local index removed, unusable without them) or a warning."""
    if problems and on_bad_video == "error":
        if "://" not in out:
            Path(out, "index.json").unlink()  # unusable: the shards lack these clips
        raise ShardWriteError(
            f"{len(problems)} clip(s) could not be read, e.g. {problems[0]}; fix the media and write the shards "
            "again with --overwrite (or use --on-bad-video skip)"
        )
    if problems:
        log.warning("on_bad_video=skip: left out %d clip(s) with bad media: %s", len(problems), "; ".join(problems[:5]))


def write_videos(out: str, entries: list[VideoEntry], storage_options: dict | None = None) -> None:
    """``<out>/videos.jsonl``: the shards' videos (a manifest without labels), for the leakage guard at training."""
    rows = [replace(e, labels={}) for e in entries]
    if "://" not in out:
        write_manifest(Path(out) / VIDEOS, rows)
        return
    from litdata.streaming.fs_provider import _get_fs_provider  # private: litdata's client for the same URI

    with tempfile.TemporaryDirectory() as tmp:
        local = write_manifest(Path(tmp) / VIDEOS, rows)
        _get_fs_provider(out, storage_options).upload_file(str(local), f"{out.rstrip('/')}/{VIDEOS}")


def _check_written(out: str, expected: int) -> None:
    """Raise unless ``out`` holds a finished index of ``expected`` items (a failed worker can leave it partial)."""
    from litdata import StreamingDataset

    try:
        count = len(StreamingDataset(out))
    except (ValueError, AssertionError, FileNotFoundError, RuntimeError) as e:
        raise ShardWriteError(
            f"writing shards to {out} did not finish ({e}); fix the error reported above and "
            "run the same command with --resume"
        ) from e
    if count != expected:
        raise ShardWriteError(
            f"{out} holds {count} clips, expected {expected}; fix the error reported above and run "
            "the same command with --resume"
        )
