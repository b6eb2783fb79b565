"""Whole-video per-frame features from the feature cache (``surgvista.features.frames``) for temporal models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from surgvista.checkpoints.read import torch_load
from surgvista.data.demo import DemoSet
from surgvista.data.manifest import VideoEntry, read_manifest
from surgvista.data.splits import check_disjoint
from surgvista.features.digest import media_fingerprint
from surgvista.features.frames import FeatureCacheError, cache_dir, extract_features, resolve_settings, video_cache_path

SPLITS = ("train", "val", "test")


class FeatureDataset(Dataset):
    """One sample per video: ``{"features": (N, D), "labels": (N,), "frames": (N,), "video": int}``.

    ``video`` indexes :attr:`video_ids`. Every video of ``manifests`` must be in ``directory`` with the
    media the manifest describes; anything else is an error naming the file (run the extraction first).
    """

    def __init__(self, manifests: Sequence[str | Path], directory: str | Path) -> None:
        if not manifests:
            raise ValueError("FeatureDataset needs at least one manifest")
        self.directory = Path(directory)
        self.entries: list[VideoEntry] = [e for m in manifests for e in read_manifest(m, check_media=False).entries]
        self.items = [self._load(e) for e in self.entries]
        self.video_ids = [f"{e.dataset}/{e.video_id}" for e in self.entries]

    def _load(self, entry: VideoEntry) -> dict:
        path = video_cache_path(self.directory, entry)
        if not path.is_file():
            raise FeatureCacheError(
                f"no cached features for {entry.dataset}/{entry.video_id} at {path}; run "
                "`python -m surgvista.features extract ...` (or data.extract_missing=true)"
            )
        item = torch_load(path)
        if entry.source.exists() and item.get("media") != media_fingerprint(entry):
            raise FeatureCacheError(
                f"{path} was extracted from other media ({item.get('media')}) than the manifest "
                f"describes ({media_fingerprint(entry)}); re-run the extraction"
            )
        return item

    @property
    def feature_dim(self) -> int:
        return int(self.items[0]["features"].shape[1])

    def class_counts(self, num_classes: int) -> torch.Tensor:
        """Annotated frames per class (``-1`` ignored); a label outside ``[0, num_classes)`` is an error."""
        labels = torch.cat([it["labels"] for it in self.items])
        labels = labels[labels >= 0]
        if labels.numel() and int(labels.max()) >= num_classes:
            raise FeatureCacheError(f"label {int(labels.max())} in {self.directory} but num_classes={num_classes}")
        return torch.bincount(labels, minlength=num_classes)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        it = self.items[index]
        return {"features": it["features"].float(), "labels": it["labels"], "frames": it["frames"], "video": index}


class FeatureDataModule(L.LightningDataModule):
    """Train/val/test video lists over cached features; one whole video per batch.

    ``extractor`` holds the :mod:`surgvista.features.frames` settings (backbone config, checkpoint, clip geometry);
    with ``extract_missing`` the cache is filled in ``prepare_data`` (only what is missing is extracted).
    """

    def __init__(
        self,
        cache_root: str,
        extractor: Mapping,
        train_manifests: Sequence[str],
        val_manifests: Sequence[str] | None = None,
        test_manifests: Sequence[str] | None = None,
        label: str = "phase",
        num_classes: int = 7,
        extract_missing: bool = True,
        shuffle: bool = True,
        num_workers: int = 0,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.settings = resolve_settings(extractor)
        self.cache_root = str(cache_root)
        self.split_manifests = {"train": train_manifests, "val": val_manifests, "test": test_manifests}
        self.datasets: dict[str, FeatureDataset] = {}

    @property
    def directory(self) -> Path:
        """The cache folder of this extractor configuration."""
        return cache_dir(self.cache_root, self.settings)

    def manifests(self, split: str) -> list[str]:
        return [str(m) for m in self.split_manifests[split] or []]

    def extract(self) -> Path:
        """Fill the cache for every split (skips cached videos); return the cache folder."""
        every = [m for split in SPLITS for m in self.manifests(split)]
        return extract_features(self.settings, every, self.cache_root, self.hparams.label)

    def prepare_data(self) -> None:
        if self.hparams.extract_missing:
            self.extract()

    def check_inputs(self) -> None:
        """Before the backbone is built and features are extracted: the splits are disjoint."""
        self.check_splits()

    def check_splits(self) -> None:
        """No video in two split files (:func:`~surgvista.data.splits.check_disjoint`), read without media."""
        files = [(split, read_manifest(m, check_media=False)) for split in SPLITS for m in self.manifests(split)]
        check_disjoint(files)

    def setup(self, stage: str | None = None) -> None:
        self.check_splits()
        for split in SPLITS:
            if split not in self.datasets and self.manifests(split):
                self.datasets[split] = FeatureDataset(self.manifests(split), self.directory)
        if "train" not in self.datasets:
            raise ValueError("FeatureDataModule needs train_manifests")

    @property
    def feature_dim(self) -> int:
        return self.datasets["train"].feature_dim

    def class_counts(self) -> torch.Tensor:
        """Frames per class in the training videos (for class weighting)."""
        return self.datasets["train"].class_counts(self.hparams.num_classes)

    def video_ids(self, split: str) -> list[str]:
        return self.datasets[split].video_ids

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader | list:
        if split not in self.datasets:
            return []
        hp = self.hparams
        return DataLoader(
            self.datasets[split],
            batch_size=1,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.shuffle)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test")


class DemoFeatureDataModule(FeatureDataModule):
    """Features of the embedded demo dataset (``surgvista.data.demo``), generated under ``root`` on first use."""

    def __init__(
        self,
        root: str,
        extractor: Mapping,
        num_videos: int = 8,
        num_val_videos: int = 2,
        video_frames: Sequence[int] = (300, 420),
        video_size: Sequence[int] = (160, 128),
        seed: int = 0,
        variant: str = "demo",
        cache_root: str | None = None,
        **kwargs,
    ) -> None:
        demo = DemoSet(Path(root), num_videos, num_val_videos, video_frames, video_size, seed, variant)
        super().__init__(
            cache_root=cache_root or str(demo.root / "features"),
            extractor=extractor,
            train_manifests=[demo.train_manifest],
            val_manifests=[demo.val_manifest],
            **kwargs,
        )
        self.demo = demo

    def check_inputs(self) -> None:
        """Nothing to check before ``prepare_data`` generates the demo set; ``setup`` checks the splits."""

    def extract(self) -> Path:
        self.demo.generate()
        return super().extract()
