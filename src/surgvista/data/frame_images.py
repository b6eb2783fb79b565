"""Single frames of the demo or proxy videos, held in memory: the image data of stage 0 (the image teacher's MAE).

The training set is every ``frame_stride``-th manifest frame of the training videos (random resized crop and
horizontal flip); the validation set is the validation videos' frames, squashed to the input size. Frames are
normalised with the ImageNet statistics, as the student's clips are (the teacher sees what the student sees).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset

from surgvista.data.demo import DemoSet
from surgvista.data.manifest import read_manifest
from surgvista.data.readers import EntryReader


def manifest_frames(manifest: str | Path, frame_stride: int = 1, backend: str = "pyav") -> np.ndarray:
    """Every ``frame_stride``-th manifest frame of every video of ``manifest``, ``(N, H, W, 3)`` uint8."""
    reader = EntryReader(backend)
    parts = [reader.read(e, range(0, e.num_frames, frame_stride)) for e in read_manifest(manifest).entries]
    return np.concatenate(parts)


class FrameImageDataset(Dataset):
    """Normalised ``(3, S, S)`` float images of in-memory frames; ``train``: random resized crop and flip."""

    def __init__(self, frames: np.ndarray, input_size: int, train: bool, crop_scale: Sequence[float] = (0.5, 1.0)):
        self.frames, self.size, self.train = frames, input_size, train
        self.crop_scale = tuple(crop_scale)
        self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.frames)

    def _crop(self, img: torch.Tensor) -> torch.Tensor:
        """A random box covering ``crop_scale`` of the area (aspect 3/4..4/3), clipped to the frame."""
        h, w = img.shape[1:]
        area = h * w * float(torch.empty(1).uniform_(*self.crop_scale))
        ratio = float(torch.empty(1).uniform_(np.log(3 / 4), np.log(4 / 3)).exp())
        ch = min(h, max(1, int(round((area / ratio) ** 0.5))))
        cw = min(w, max(1, int(round((area * ratio) ** 0.5))))
        y = int(torch.randint(0, h - ch + 1, (1,)))
        x = int(torch.randint(0, w - cw + 1, (1,)))
        return img[:, y:y + ch, x:x + cw]

    def __getitem__(self, i: int) -> torch.Tensor:
        img = torch.from_numpy(np.ascontiguousarray(self.frames[i])).permute(2, 0, 1).float() / 255
        if self.train:
            img = self._crop(img)
            if float(torch.rand(1)) < 0.5:
                img = img.flip(-1)
        img = F.interpolate(img[None], size=(self.size, self.size), mode="bilinear", antialias=True)[0]
        return (img - self.mean) / self.std


class DemoFrameDataModule(L.LightningDataModule):
    """Frames of the demo (``variant=demo``) or proxy (``variant=proxy``) set under ``root``, written on first use."""

    def __init__(
        self,
        root: str,
        num_videos: int = 8,
        num_val_videos: int = 2,
        video_frames: Sequence[int] = (300, 420),
        video_size: Sequence[int] = (160, 128),
        seed: int = 0,
        variant: str = "proxy",
        input_size: int = 112,
        batch_size: int = 32,
        num_workers: int = 0,
        frame_stride: int = 1,
        crop_scale: Sequence[float] = (0.5, 1.0),
        backend: str = "pyav",
    ) -> None:
        super().__init__()
        self.demo = DemoSet(Path(root), num_videos, num_val_videos, video_frames, video_size, seed, variant)
        self.input_size, self.batch_size, self.num_workers = input_size, batch_size, num_workers
        self.frame_stride, self.crop_scale, self.backend = frame_stride, crop_scale, backend
        self.train_set: FrameImageDataset | None = None
        self.val_set: FrameImageDataset | None = None

    def prepare_data(self) -> None:
        self.demo.generate()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            frames = manifest_frames(self.demo.train_manifest, self.frame_stride, self.backend)
            self.train_set = FrameImageDataset(frames, self.input_size, True, self.crop_scale)
            val = manifest_frames(self.demo.val_manifest, self.frame_stride, self.backend)
            self.val_set = FrameImageDataset(val, self.input_size, False)

    def train_dataloader(self) -> DataLoader:
        drop = len(self.train_set) >= self.batch_size  # a tiny set still gives one (partial) batch
        return DataLoader(self.train_set, self.batch_size, shuffle=True, drop_last=drop,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.batch_size, shuffle=False, num_workers=self.num_workers)
