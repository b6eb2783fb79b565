"""LightningDataModules for pre-training on manifests, and on the embedded demo dataset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from surgvista.data.clips import VideoClipDataset
from surgvista.data.transforms import CenterCrop, MultiScaleCrop


class PretrainDataModule(L.LightningDataModule):
    """Clips from ``train_manifests`` (multi-scale crop) and optional ``val_manifests`` (centre crop)."""

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
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.train_set: VideoClipDataset | None = None
        self.val_set: VideoClipDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        common = {"num_frames": hp.num_frames, "sampling_rate": hp.sampling_rate, "backend": hp.backend}
        if self.train_set is None:
            self.train_set = VideoClipDataset(
                list(hp.train_manifests), MultiScaleCrop(hp.input_size, hp.scales), **common
            )
        if self.val_set is None and hp.val_manifests:
            self.val_set = VideoClipDataset(
                list(hp.val_manifests), CenterCrop(hp.input_size), anchor_stride=hp.val_anchor_stride, **common
            )

    def _loader(self, dataset: VideoClipDataset, train: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            dataset, batch_size=hp.batch_size, shuffle=train, drop_last=train, num_workers=hp.num_workers,
            pin_memory=hp.pin_memory, persistent_workers=hp.persistent_workers and hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, train=False) if self.val_set is not None else []


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
        **kwargs,
    ) -> None:
        root_path = Path(root)
        super().__init__(
            train_manifests=[str(root_path / "train.jsonl")], val_manifests=[str(root_path / "val.jsonl")], **kwargs
        )
        self.demo_args = {
            "root": root_path, "num_videos": num_videos, "num_val_videos": num_val_videos,
            "frames_per_video": tuple(video_frames), "size": tuple(video_size), "seed": seed,
        }

    def prepare_data(self) -> None:
        from surgvista.data.demo import generate_demo_dataset

        generate_demo_dataset(**self.demo_args)
