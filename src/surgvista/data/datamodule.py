"""LightningDataModules for pre-training on manifests, a mixture of datasets, and the embedded demo dataset."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from surgvista.data.adapters import PRETRAIN_DATASETS
from surgvista.data.clips import VideoClipDataset, collate_clips
from surgvista.data.demo import DemoSet
from surgvista.data.leakage import check_leakage
from surgvista.data.manifest import read_manifest
from surgvista.data.resumable import ResumableDataLoader, data_seed, eval_loader, resumable_loader
from surgvista.data.transforms import CenterCrop, MultiScaleCrop, normalize_clip

log = logging.getLogger(__name__)

class MixtureSampler(Sampler[int]):
    """``num_samples`` indices per epoch: a part is drawn with probability ``shares[p]``, then a sample of
    that part uniformly (with replacement). Parts are consecutive index ranges of ``sizes``.

    :meth:`indices` gives epoch ``e``'s draws from a generator seeded with ``seed + e``: every rank draws the same
    list (:class:`~surgvista.data.resumable.ResumableSampler` shards it) and a resumed run draws it again.
    Iterating the sampler itself draws epoch after epoch.
    """

    def __init__(self, sizes: Sequence[int], shares: Sequence[float], num_samples: int, seed: int = 0) -> None:
        if len(sizes) != len(shares) or any(w < 0 for w in shares) or sum(shares) <= 0:
            raise ValueError(f"need one non-negative share per part and a positive sum; got {list(shares)}")
        empty = [i for i, (n, w) in enumerate(zip(sizes, shares, strict=True)) if w > 0 and n == 0]
        if empty:
            raise ValueError(f"parts {empty} have a positive share but no samples")
        self.sizes, self.num_samples, self.seed = list(sizes), num_samples, seed
        self.shares = torch.tensor(shares, dtype=torch.float64) / sum(shares)
        self.starts = torch.tensor([0, *self.sizes[:-1]]).cumsum(0)
        self._epoch = 0

    def __len__(self) -> int:
        return self.num_samples

    def indices(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        part = torch.multinomial(self.shares, self.num_samples, replacement=True, generator=generator)
        sizes = torch.tensor(self.sizes, dtype=torch.float64)[part]
        offset = (torch.rand(self.num_samples, generator=generator, dtype=torch.float64) * sizes).long()
        return (self.starts[part] + offset).tolist()

    def __iter__(self) -> Iterator[int]:
        self._epoch += 1
        return iter(self.indices(self._epoch - 1))


class PretrainDataModule(L.LightningDataModule):
    """Clips from ``train_manifests`` (multi-scale crop) and optional ``val_manifests`` (centre crop).

    The settings (K clips per anchor, ``normalize_on_device``, bad media, leakage guard) are described in docs/data.md.
    """

    def __init__(
        self,
        train_manifests: Sequence[str],
        val_manifests: Sequence[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        num_frames: int = 16,
        sampling_rate: int = 4,
        input_size: int = 224,
        scales: Sequence[float] = (1, 0.875, 0.75, 0.66),
        backend: str = "decord",
        val_anchor_stride: int = 8,
        num_clips_per_video: int = 1,
        normalize_on_device: bool = False,
        prefetch_factor: int | None = None,
        on_bad_video: str = "error",
        min_video_frames: int = 1,
        data_dir: str | None = None,
        exclude_from: Sequence[str] = (),
        allow_leakage: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.train_set: VideoClipDataset | None = None
        self.val_set: VideoClipDataset | None = None
        self.train_shares: list[float] | None = None  # per train manifest; None = proportional to frames
        self._inputs_checked = False

    def check_inputs(self) -> None:
        """Read every manifest (media included) and run the leakage guard: cheap checks that train.py runs
        before the model (and its teacher) is built."""
        hp = self.hparams
        entries = [e for m in hp.train_manifests for e in read_manifest(m).entries]
        for m in hp.val_manifests or ():
            read_manifest(m)
        check_leakage(entries, list(hp.exclude_from or ()), hp.data_dir, hp.allow_leakage)
        self._inputs_checked = True

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        norm = not hp.normalize_on_device
        common = {k: hp[k] for k in ("num_frames", "sampling_rate", "backend", "on_bad_video", "min_video_frames")}
        if self.train_set is None:
            self.train_set = VideoClipDataset(
                list(hp.train_manifests), MultiScaleCrop(hp.input_size, hp.scales, normalize=norm),
                num_clips=hp.num_clips_per_video, **common,
            )
            if not self._inputs_checked:
                check_leakage(self.train_set.entries, list(hp.exclude_from or ()), hp.data_dir, hp.allow_leakage)
        if self.val_set is None and hp.val_manifests:
            self.val_set = VideoClipDataset(
                list(hp.val_manifests), CenterCrop(hp.input_size, normalize=norm), anchor_stride=hp.val_anchor_stride,
                **common,
            )

    def _loader_kwargs(self) -> dict:
        hp = self.hparams
        workers = hp.num_workers > 0
        return {
            "batch_size": hp.batch_size, "num_workers": hp.num_workers, "pin_memory": hp.pin_memory,
            "persistent_workers": hp.persistent_workers and workers,
            "prefetch_factor": hp.prefetch_factor if workers else None, "collate_fn": collate_clips,
        }

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled (or mixture-drawn) per epoch from the run's seed; resumes mid-epoch (data/resumable.py)."""
        seed, order = data_seed(self.hparams.seed), None
        if self.train_shares is not None:
            sizes = self.train_set.manifest_sizes(len(self.hparams.train_manifests))
            order = MixtureSampler(sizes, self.train_shares, len(self.train_set), seed).indices
        return resumable_loader(self.train_set, self.trainer, seed, order, **self._loader_kwargs())

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With ``normalize_on_device``, uint8 clips become normalised float here, on the accelerator."""
        video = batch.get("video") if isinstance(batch, dict) else None
        if isinstance(video, torch.Tensor) and video.dtype == torch.uint8:
            batch = {**batch, "video": normalize_clip(video)}
        return batch

    def val_dataloader(self) -> DataLoader | list:
        return eval_loader(self.val_set, **self._loader_kwargs()) if self.val_set is not None else []


class DemoDataModule(PretrainDataModule):
    """The embedded synthetic-surgery dataset: written to ``root`` on first use, then read like any other."""

    def __init__(
        self,
        root: str,
        num_videos: int = 8,
        num_val_videos: int = 2,
        video_frames: Sequence[int] = (300, 420),
        video_size: Sequence[int] = (160, 128),
        seed: int = 0,
        variant: str = "demo",
        **kwargs,
    ) -> None:
        demo = DemoSet(Path(root), num_videos, num_val_videos, video_frames, video_size, seed, variant)
        super().__init__(train_manifests=[demo.train_manifest], val_manifests=[demo.val_manifest], **kwargs)
        self.demo = demo

    def check_inputs(self) -> None:
        """Nothing to check before ``prepare_data`` generates the demo set."""

    def prepare_data(self) -> None:
        self.demo.generate()


class MixtureDataModule(PretrainDataModule):
    """Pre-training on any subset of datasets: ``include`` names them, each read from ``manifests[name]``
    (default ``<data_dir>/<name>/pretrain.jsonl``) and concatenated; ``weights``: docs/data.md (``data.weights``).
    """

    def __init__(
        self,
        data_dir: str,
        include: Sequence[str] = PRETRAIN_DATASETS,
        manifests: Mapping[str, str | None] | None = None,
        weights: Mapping[str, float] | None = None,
        val_manifests: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        include = list(include)
        if not include:
            raise ValueError("data.include is empty: name at least one pre-training dataset")
        dup = sorted({n for n in include if include.count(n) > 1})
        if dup:
            raise ValueError(f"data.include names {dup} more than once")
        manifests = dict(manifests or {})
        paths = [str(manifests.get(n) or Path(data_dir) / n / "pretrain.jsonl") for n in include]
        super().__init__(train_manifests=paths, val_manifests=val_manifests, data_dir=data_dir, **kwargs)
        self.include = include
        if weights is not None:
            weights = dict(weights)
            missing = [n for n in include if n not in weights]
            extra = [n for n in weights if n not in include]
            if missing or extra:
                raise ValueError(f"data.weights must give a weight for every dataset in data.include={include}: "
                                 f"missing {missing}, not included {extra}")
            self.train_shares = [float(weights[n]) for n in include]

    def setup(self, stage: str | None = None) -> None:
        first = self.train_set is None
        super().setup(stage)
        if first:
            sizes = self.train_set.manifest_sizes(len(self.include))
            shares = self.train_shares or sizes
            total = sum(shares)
            parts = [f"{n} {c} frames → {100 * w / total:.2f}%"
                     for n, c, w in zip(self.include, sizes, shares, strict=True)]
            log.info("pre-training mixture (%d anchors/epoch): %s", len(self.train_set), ", ".join(parts))
