"""Downstream (fine-tuning) datasets over manifests.

Two samplers: ``"frame"`` (phase, triplet, Endoscapes CVS) gives one sample per *annotated* frame of every video,
the online causal clip ending at it (:func:`~surgvista.data.sampling.causal_clip_indices`); unannotated frames
(``-1`` / ``null``) are never targets but stay usable as context. ``"clip"`` (Cholec80-CVS, SurgicalActions160)
gives one sample per video with a clip-level label (:func:`uniform_clip_indices`).

Samples are dicts: ``video``, ``target`` (class id, or a multi-hot float vector for multi-label tasks),
``video_index`` (row of the manifest), ``frame_index`` (manifest frame of the target; 0 for clip samples) and
``index`` (dataset index).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from surgvista.data.clip_augment import EvalClipTransform, TrainClipTransform
from surgvista.data.demo import DemoSet
from surgvista.data.manifest import Manifest, ManifestError, read_manifest
from surgvista.data.readers import EntryReader
from surgvista.data.resumable import data_seed, eval_loader, resumable_loader
from surgvista.data.sampling import causal_clip_indices
from surgvista.data.splits import check_splits
from surgvista.data.subsets import nested_video_subset, subset_size

SAMPLERS = ("frame", "clip")


def uniform_clip_indices(length: int, num_frames: int) -> list[int]:
    """Reference clip-level sampling: pad with the last frame to ``T``, take every ``L//T``-th."""
    if length < 1 or num_frames < 1:
        raise ValueError(f"need length >= 1 and num_frames >= 1, got {length}, {num_frames}")
    ids = list(range(length)) + [length - 1] * max(0, num_frames - length)
    interval = len(ids) // num_frames
    return ids[::interval][:num_frames]


class DownstreamDataset(Dataset):
    """Samples of one manifest for a fine-tuning task (see the module docstring)."""

    def __init__(
        self,
        manifest: str | Path,
        label: str,
        num_classes: int,
        transform: Callable[[np.ndarray], torch.Tensor],
        sampler: str = "frame",
        multilabel: bool = False,
        num_frames: int = 16,
        sampling_rate: int = 4,
        target_stride: int = 1,
        backend: str = "decord",
    ) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
        if target_stride < 1:
            raise ValueError(f"target_stride must be >= 1, got {target_stride}")
        m = read_manifest(manifest)
        self.manifest, self.entries, self.meta = m.path, m.entries, m.meta
        self.label, self.num_classes, self.multilabel, self.sampler = label, num_classes, multilabel, sampler
        self.transform, self.num_frames, self.sampling_rate = transform, num_frames, sampling_rate
        self.label_names = self._label_names()
        self.samples = self._index(target_stride)
        if not len(self.samples):
            raise ManifestError(f"{self.manifest}: no annotated {label!r} targets")
        self.reader = EntryReader(backend)

    def _label_names(self) -> list[str] | None:
        names = (self.meta.get("label_names") or {}).get(self.label)
        if names is not None and len(names) != self.num_classes:
            raise ManifestError(
                f"{self.manifest}: _meta.label_names[{self.label!r}] has {len(names)} classes but the model has "
                f"num_classes={self.num_classes}; set model.net.num_classes={len(names)} or fix the manifest"
            )
        return list(names) if names is not None else None

    def _check_value(self, value, where: str) -> bool:
        """Whether ``value`` is an annotated target; raises on out-of-range or malformed labels."""
        if value is None or (value == -1 and not self.multilabel):
            return False
        if self.multilabel:
            ok = isinstance(value, list) and all(isinstance(v, int) and 0 <= v < self.num_classes for v in value)
            kind = f"a list of ids in [0, {self.num_classes}) or null"
        else:
            ok = isinstance(value, int) and 0 <= value < self.num_classes
            kind = f"an int in [0, {self.num_classes}) or -1"
        if not ok:
            raise ManifestError(f"{where}: label {self.label!r} must be {kind}, got {value!r}")
        return True

    def _index(self, target_stride: int) -> np.ndarray:
        rows = []
        for v, e in enumerate(self.entries):
            where = f"{self.manifest} video {e.video_id!r}"
            if self.label not in e.labels:
                raise ManifestError(f"{where}: no {self.label!r} label; has {sorted(e.labels)}")
            values = e.labels[self.label]
            if self.sampler == "clip":
                if isinstance(values, list) and not self.multilabel:
                    raise ManifestError(
                        f"{where}: the clip sampler needs one clip-level {self.label!r} value, got a per-frame list"
                    )
                if self._check_value(values, where):
                    rows.append((v, 0))
                continue
            if not isinstance(values, list):
                raise ManifestError(f"{where}: the frame sampler needs per-frame {self.label!r} labels, got {values!r}")
            frames = [t for t, x in enumerate(values) if self._check_value(x, f"{where} frame {t}")]
            rows.extend((v, t) for t in frames[::target_stride])
        return np.asarray(rows, dtype=np.int64).reshape(-1, 2)

    def keep_videos(self, video_ids: Collection[str], target_stride: int = 1) -> None:
        """Keep only the manifest rows of ``video_ids`` (a label-efficiency subset) and index them again."""
        self.entries = [e for e in self.entries if e.video_id in set(video_ids)]
        self.samples = self._index(target_stride)

    def __len__(self) -> int:
        return len(self.samples)

    def frame_ids(self, index: int) -> list[int]:
        """Manifest frames of sample ``index``'s clip, oldest first."""
        v, t = (int(x) for x in self.samples[index])
        if self.sampler == "clip":
            return uniform_clip_indices(self.entries[v].num_frames, self.num_frames)
        return causal_clip_indices(t, self.num_frames, self.sampling_rate)

    def target(self, index: int) -> torch.Tensor:
        v, t = (int(x) for x in self.samples[index])
        values = self.entries[v].labels[self.label]
        value = values if self.sampler == "clip" else values[t]
        if self.multilabel:
            hot = torch.zeros(self.num_classes)
            hot[list(value)] = 1.0
            return hot
        return torch.tensor(value, dtype=torch.long)

    def __getitem__(self, index: int) -> dict:
        v, t = (int(x) for x in self.samples[index])
        frames = self.reader.read(self.entries[v], self.frame_ids(index))
        return {
            "video": self.transform(frames),
            "target": self.target(index),
            "video_index": v,
            "frame_index": t,
            "index": index,
        }


class DownstreamDataModule(L.LightningDataModule):
    """Train / val / test manifests of one downstream dataset.

    ``test_manifest: null`` evaluates on ``val_manifest`` (and says so); ``val_manifest: null`` trains without
    validation (model selection then falls back to the last epoch).
    """

    def __init__(
        self,
        train_manifest: str | None,
        val_manifest: str | None,
        test_manifest: str | None,
        label: str,
        num_classes: int,
        sampler: str = "frame",
        multilabel: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        num_frames: int = 16,
        sampling_rate: int = 4,
        input_size: int = 224,
        auto_augment: str | None = "rand-m7-n4-mstd0.5-inc1",
        crop_scale: Sequence[float] = (0.7, 1.0),
        crop_ratio: Sequence[float] = (0.75, 4 / 3),
        hflip: float = 0.5,
        reprob: float = 0.25,
        eval_views: Sequence[str] = ("squash",),
        val_target_stride: int = 1,
        test_target_stride: int = 1,
        backend: str = "decord",
        train_target_stride: int = 1,
        train_fraction: float = 1.0,
        subset_seed: int = 0,
    ) -> None:
        super().__init__()
        subset_size(train_fraction, 1)  # checks the fraction now
        self.save_hyperparameters(logger=False)
        self.datasets: dict[str, DownstreamDataset] = {}

    def _dataset(self, split: str, manifest: str, train: bool) -> DownstreamDataset:
        hp = self.hparams
        if train:
            transform = TrainClipTransform(
                hp.input_size, hp.auto_augment, hp.crop_scale, hp.crop_ratio, hp.hflip, hp.reprob
            )
        else:
            transform = EvalClipTransform(hp.input_size, hp.eval_views)
        stride = {"train": hp.train_target_stride, "val": hp.val_target_stride, "test": hp.test_target_stride}[split]
        keys = ("label", "num_classes", "sampler", "multilabel", "num_frames", "sampling_rate", "backend")
        dataset = DownstreamDataset(manifest, transform=transform, target_stride=stride, **{k: hp[k] for k in keys})
        if train and hp.train_fraction < 1:  # few labelled videos: a nested, seeded subset (data/subsets.py)
            ids = [e.video_id for e in dataset.entries]
            dataset.keep_videos(nested_video_subset(ids, hp.train_fraction, hp.subset_seed), stride)
        return dataset

    def manifests(self) -> dict[str, str | None]:
        hp = self.hparams
        return {"train": hp.train_manifest, "val": hp.val_manifest, "test": hp.test_manifest or hp.val_manifest}

    def check_inputs(self) -> None:
        """Before the model is built: the split manifests that exist are consistent (:func:`check_splits`)."""
        self.check_splits()

    def check_splits(self) -> None:
        """Refuse a ``video_id`` in two split files and class names that differ between splits
        (:mod:`surgvista.data.splits`); loaded splits as loaded, the others read (no media) if their file exists, so
        the test split is checked before training too."""
        splits: dict[str, Manifest] = {}
        for split, path in self.manifests().items():
            if split in self.datasets:
                d = self.datasets[split]
                splits[split] = Manifest(d.manifest, d.entries, d.meta)
            elif path and Path(path).is_file():
                splits[split] = read_manifest(path, check_media=False)
        check_splits(splits, self.hparams.label, self.hparams.num_classes)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, ("train", "val", "test")):
            path = self.manifests()[split]
            if split not in self.datasets and path:
                self.datasets[split] = self._dataset(split, path, train=split == "train")
        self.check_splits()
        if stage == "fit" and "train" not in self.datasets:
            raise ValueError("data.train_manifest is required for training")
        if stage in ("test", "predict") and "test" not in self.datasets:
            raise ValueError("data.test_manifest (or data.val_manifest) is required for testing")

    @property
    def label_names(self) -> list[str] | None:
        """Class names from the first loaded manifest that has them (``_meta.label_names[label]``)."""
        return next((d.label_names for d in self.datasets.values() if d.label_names), None)

    def video_ids(self, split: str) -> list[str]:
        """``video_id`` of every manifest row of ``split`` (indexed by ``video_index``)."""
        return [e.video_id for e in self.datasets[split].entries]

    def _loader(self, split: str) -> DataLoader:
        hp, train = self.hparams, split == "train"
        kwargs = {
            "batch_size": hp.batch_size if train else (hp.eval_batch_size or hp.batch_size),
            "num_workers": hp.num_workers,
            "pin_memory": hp.pin_memory,
            "persistent_workers": hp.persistent_workers and hp.num_workers > 0,
        }
        if train:  # shuffled per epoch from the run's seed; resumes mid-epoch (data/resumable.py)
            return resumable_loader(self.datasets[split], self.trainer, data_seed(), **kwargs)
        return eval_loader(self.datasets[split], **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class DemoDownstreamDataModule(DownstreamDataModule):
    """Phase fine-tuning on the embedded demo dataset (generated under ``root`` on first use); test = val."""

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
        kwargs.setdefault("label", "phase")
        super().__init__(
            train_manifest=demo.train_manifest, val_manifest=demo.val_manifest, test_manifest=None, **kwargs
        )
        self.demo = demo

    def check_inputs(self) -> None:
        """Nothing to check before ``prepare_data`` (re)generates the demo set; ``setup`` checks the splits."""

    def prepare_data(self) -> None:
        self.demo.generate()
