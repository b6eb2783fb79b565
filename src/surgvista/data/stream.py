"""Pre-training from clip shards (``surgvista.data.shards``) streamed by litdata (``data=pretrain_stream``).

Shards are read from a local folder or an object-storage URI (``s3://bucket/prefix``, ``gs://…``; ``local:/path``
reads a local folder through the same download-and-cache path). litdata gives every rank and every DataLoader
worker its own chunks (disjoint samples; under DDP each rank gets the same number), shuffles chunks and the items
within them per epoch from ``seed``, and its ``StreamingDataLoader`` has a ``state_dict`` that Lightning stores in
checkpoints, so a run resumed mid-epoch continues with the samples not yet seen.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from surgvista.data.clips import collate_clips
from surgvista.data.datamodule import PretrainDataModule
from surgvista.data.leakage import check_leakage
from surgvista.data.manifest import VideoEntry, read_manifest
from surgvista.data.readers import read_image
from surgvista.data.shards import SHARD_VERSION, VIDEOS
from surgvista.data.transforms import CenterCrop, MultiScaleCrop

REMOTE_PREFIXES = ("s3://", "gs://", "r2://", "azure://", "hf://", "local:")


def decode_clip(item: dict, where: str) -> np.ndarray:
    """A shard item's clip as ``(T, H, W, 3)`` uint8: each distinct frame decoded once, then put in clip order."""
    data, ends = memoryview(item["frames"]), np.cumsum(item["sizes"])
    starts = ends - item["sizes"]
    frames = [
        read_image(io.BytesIO(data[s:e]), name=f"{where}: frame {k} of clip {int(item['clip'][1])}")
        for k, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True))
    ]
    return np.stack(frames)[item["order"]]


class ShardClip:
    """litdata transform: shard item → ``{"video", "index", "skipped"}``, as :class:`VideoClipDataset` returns."""

    def __init__(self, transform: Callable, num_frames: int, sampling_rate: int, num_clips: int, where: str) -> None:
        self.transform, self.num_frames, self.sampling_rate = transform, num_frames, sampling_rate
        self.num_clips, self.where = num_clips, where

    def __call__(self, item: dict) -> dict:
        version, index, _, rate = (int(v) for v in item["clip"])
        if version != SHARD_VERSION or len(item["order"]) != self.num_frames or rate != self.sampling_rate:
            raise ValueError(
                f"{self.where} holds {len(item['order'])}-frame clips at stride {rate} (shard version {version}); "
                f"data.num_frames={self.num_frames}, data.sampling_rate={self.sampling_rate} (version "
                f"{SHARD_VERSION}) need shards written with those: python -m surgvista.shards --num-frames "
                f"{self.num_frames} --sampling-rate {self.sampling_rate} ..."
            )
        frames = decode_clip(item, self.where)
        video = (
            self.transform(frames)
            if self.num_clips == 1
            else torch.stack([self.transform(frames) for _ in range(self.num_clips)])
        )
        return {"video": video, "index": index, "skipped": 0}


def shard_videos(shards: str, storage_options: dict | None = None) -> list[VideoEntry]:
    """The videos whose clips the shards at ``shards`` hold (their ``videos.jsonl``)."""
    shards = shards.removeprefix("local:")
    if not shards.startswith(REMOTE_PREFIXES):
        return read_manifest(Path(shards) / VIDEOS, check_media=False).entries
    from litdata.streaming.fs_provider import _get_fs_provider  # private: litdata's client for the same URI

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / VIDEOS
        _get_fs_provider(shards, storage_options).download_file(f"{shards.rstrip('/')}/{VIDEOS}", str(local))
        return read_manifest(local, check_media=False).entries


def streaming_clip_dataset(
    input_dir: str,
    transform: Callable,
    num_frames: int = 16,
    sampling_rate: int = 4,
    num_clips: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    cache_dir: str | None = None,
    max_cache_size: str | None = None,
    storage_options: dict | None = None,
):
    """A litdata ``StreamingDataset`` over the shards at ``input_dir`` yielding transformed clips."""
    from litdata import StreamingDataset
    from litdata.streaming.resolver import Dir

    input_dir = str(input_dir)
    source = Dir(path=cache_dir, url=input_dir) if cache_dir and input_dir.startswith(REMOTE_PREFIXES) else input_dir
    return StreamingDataset(
        source,
        shuffle=shuffle,
        seed=seed,
        max_cache_size=max_cache_size,
        storage_options=dict(storage_options or {}),
        transform=ShardClip(transform, num_frames, sampling_rate, num_clips, input_dir),
    )


class StreamDataModule(PretrainDataModule):
    """:class:`PretrainDataModule` reading clip shards instead of manifests (same crops, batches, normalisation).

    ``train_shards``/``val_shards``: shard folders or URIs; ``cache_dir``: where chunks of remote shards are cached
    (``None``: litdata's default), at most ``max_cache_size`` (e.g. ``"100GB"``); ``storage_options``: passed to
    the object-storage client (e.g. ``{endpoint_url: ...}``); ``shuffle``: shuffle the training shards per epoch.
    ``exclude_from``/``data_dir``/``allow_leakage``: the leakage guard, run on the shards' ``videos.jsonl``.
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        cache_dir: str | None = None,
        max_cache_size: str | None = None,
        storage_options: dict | None = None,
        shuffle: bool = True,
        exclude_from: Sequence[str] = (),
        data_dir: str | None = None,
        allow_leakage: bool = False,
        **kwargs,
    ) -> None:
        for key in ("train_manifests", "val_manifests"):
            if kwargs.get(key):
                raise ValueError(
                    f"data.{key} does not apply to data=pretrain_stream: the shards were written from "
                    "manifests by python -m surgvista.shards; name them in data.train_shards"
                )
        super().__init__(
            train_manifests=[], exclude_from=exclude_from, data_dir=data_dir, allow_leakage=allow_leakage, **kwargs
        )
        self._inputs_checked = False

    def check_inputs(self) -> None:
        """The leakage guard on the videos of the training shards (their ``videos.jsonl``)."""
        hp = self.hparams
        if hp.exclude_from:
            videos = shard_videos(str(hp.train_shards), hp.storage_options)
            check_leakage(videos, list(hp.exclude_from), hp.data_dir, hp.allow_leakage)
        self._inputs_checked = True

    def _dataset(self, shards: str, train: bool):
        hp = self.hparams
        norm = not hp.normalize_on_device
        transform = (
            MultiScaleCrop(hp.input_size, hp.scales, normalize=norm)
            if train
            else CenterCrop(hp.input_size, normalize=norm)
        )
        return streaming_clip_dataset(
            shards,
            transform,
            hp.num_frames,
            hp.sampling_rate,
            hp.num_clips_per_video if train else 1,
            shuffle=train and hp.shuffle,
            seed=hp.seed,
            cache_dir=hp.cache_dir,
            max_cache_size=hp.max_cache_size,
            storage_options=hp.storage_options,
        )

    def setup(self, stage: str | None = None) -> None:
        if not self._inputs_checked:
            self.check_inputs()
        if self.train_set is None:
            self.train_set = self._dataset(self.hparams.train_shards, train=True)
        if self.val_set is None and self.hparams.val_shards:
            self.val_set = self._dataset(self.hparams.val_shards, train=False)

    def _loader(self, dataset, train: bool, sampler=None):
        from litdata import StreamingDataLoader

        hp = self.hparams
        workers = hp.num_workers > 0
        return StreamingDataLoader(
            dataset,
            batch_size=hp.batch_size,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.persistent_workers and workers,
            prefetch_factor=hp.prefetch_factor if workers else None,
            collate_fn=collate_clips,
        )

    def train_dataloader(self):
        return self._loader(self.train_set, train=True)
