"""Cached frozen-backbone features of a downstream task's clips, served to a probe head (``surgvista.features.clips``).

The loaders yield the fine-tuning batch layout with ``video`` = the cached ``pooled (B, D)`` or ``tokens (B, K, D)``
(``inputs``), so the task modules run unchanged; ``inputs=video`` serves the source's own clips (full fine-tuning).
How ``source`` and ``backbone`` are configured: docs/benchmark.md (the clip-feature cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from surgvista.data.subsets import k_shot_indices, nested_video_subset, subset_size
from surgvista.features.clips import ClipFeatureCache
from surgvista.utils.errors import ConfigError

INPUTS = ("pooled", "tokens", "video")  # video: no cache, the source's own clips (full fine-tuning)
TOKEN_DTYPES = ("float16", "bfloat16", "float32")


class CachedClipDataset(Dataset):
    """Samples of one split of a clip-feature cache."""

    def __init__(self, data: dict[str, torch.Tensor], inputs: str) -> None:
        self.data, self.inputs = data, inputs

    def __len__(self) -> int:
        return len(self.data["index"])

    def __getitem__(self, i: int) -> dict:
        keys = ("target", "video_index", "frame_index", "index")
        return {"video": self.data[self.inputs][i].float(), **{k: self.data[k][i] for k in keys}}


class ProbeDataModule(L.LightningDataModule):
    """Probe batches from the clip-feature cache of ``backbone`` on the ``source`` downstream data.

    ``batch_size`` (a source argument) is the probe's training batch; extraction uses the source's
    ``eval_batch_size`` and ``num_workers``. ``max_tokens``/``token_dtype``/``shard_size`` set what is stored,
    ``device``/``autocast`` where and how the backbone runs.
    """

    def __init__(
        self,
        source: Mapping,
        backbone: Mapping,
        cache_root: str,
        inputs: str = "pooled",
        max_tokens: int = 64,
        token_dtype: str = "float16",
        shard_size: int = 4096,
        device: str = "auto",
        autocast: str | None = None,
        extract_missing: bool = True,
        chunk_frames: int | None = None,
        train_fraction: float = 1.0,
        train_shots: int | None = None,
        subset_seed: int = 0,
        **source_kwargs,
    ) -> None:
        super().__init__()
        if inputs not in INPUTS:
            raise ConfigError(f"data.inputs={inputs!r}: expected one of {INPUTS}")
        if token_dtype not in TOKEN_DTYPES:
            raise ConfigError(f"data.token_dtype={token_dtype!r}: expected one of {TOKEN_DTYPES}")
        if isinstance(backbone, DictConfig):
            backbone = OmegaConf.to_container(backbone, resolve=True)
        if not isinstance(backbone, Mapping) or "_target_" not in backbone:
            raise ConfigError(f"data.backbone={backbone!r}: expected a config with a _target_ (model/backbone=<name>)")
        if not isinstance(source, Mapping) or "_target_" not in source:
            raise ConfigError(f"data.source={source!r}: expected a config with a _target_ (a downstream data module)")
        self.inputs, self.extract_missing = inputs, extract_missing
        self.subset = {"train_fraction": float(train_fraction), "train_shots": train_shots, "subset_seed": subset_seed}
        subset_size(train_fraction, 1)  # checks the fraction now
        self.source = instantiate(source, _partial_=True)(**source_kwargs)
        storage = {
            "max_tokens": max_tokens,
            "token_dtype": token_dtype,
            "shard_size": shard_size,
            "device": device,
            "autocast": autocast,
            "chunk_frames": chunk_frames,
        }
        self.cache = ClipFeatureCache(cache_root, backbone, self.source, storage)
        self.data: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def directory(self) -> Path:
        return self.cache.directory

    @property
    def frozen(self) -> bool:
        """Whether batches come from the feature cache (``inputs`` pooled/tokens) or the source (``video``)."""
        return self.inputs != "video"

    def prepare_data(self) -> None:
        with torch.random.fork_rng(devices=[]):  # the probe's draws do not depend on what had to be made here
            self.source.prepare_data()  # e.g. the demo data module generates its videos
            if self.extract_missing and self.frozen:
                self.cache.extract()

    def setup(self, stage: str | None = None) -> None:
        if not self.frozen:
            self.source.setup(stage)
            self.meta = {}
            return
        self.meta = self.cache.meta()
        for split in [*self.meta["splits"], *self.meta.get("aliases", {})]:
            if split not in self.data:
                data = self.cache.load(split)
                self.data[split] = self.train_subset(data) if split == "train" else data
        if "train" not in self.data:
            raise ConfigError("the probe needs a train split (data.train_manifest)")

    def train_subset(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The label-efficiency subset of the cached training samples: the samples of a nested, seeded fraction of
        the training videos (``train_fraction``), then at most ``train_shots`` per class (data/subsets.py)."""
        fraction, shots, seed = self.subset["train_fraction"], self.subset["train_shots"], self.subset["subset_seed"]
        keep = torch.ones(len(data["index"]), dtype=torch.bool)
        if fraction < 1:
            ids = self.meta["video_ids"]["train"]
            chosen = set(nested_video_subset(ids, fraction, seed))
            keep = torch.tensor([ids[int(v)] in chosen for v in data["video_index"]], dtype=torch.bool)
        if shots:
            rows = torch.nonzero(keep).flatten()
            picked = k_shot_indices(data["target"][rows].tolist(), int(shots), seed)
            keep = torch.zeros_like(keep)
            keep[rows[picked]] = True
        return {k: v[keep] for k, v in data.items()}

    def subset_record(self) -> dict:
        """What ``probe.json`` says of the training subset: the knobs, the videos and samples kept."""
        train = self.data.get("train", {})
        videos = train["video_index"].unique().numel() if "video_index" in train else None
        count = len(train["index"]) if "index" in train else None
        return {**self.subset, "train_videos": videos, "train_samples": count}

    @property
    def feature_dim(self) -> int:
        return int(self.data["train"]["pooled"].shape[1])

    @property
    def label_names(self) -> list[str] | None:
        return self.meta.get("label_names") if self.frozen else self.source.label_names

    def video_ids(self, split: str) -> list[str]:
        if not self.frozen:
            return self.source.video_ids(split)
        return self.meta["video_ids"][self.meta.get("aliases", {}).get(split, split)]

    def train_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled (N, D), targets)`` of the training split (the k-NN bank)."""
        return self.data["train"]["pooled"], self.data["train"]["target"]

    @property
    def independent_val(self) -> bool:
        """Whether a validation split exists that is not the test split (what a probe grid may select on)."""
        if "val" not in self.data:
            return False
        manifests = self.source.manifests()
        return not manifests.get("test") or manifests.get("test") != manifests.get("val")

    def _loader(self, split: str) -> DataLoader | list:
        if not self.frozen:
            return getattr(self.source, f"{split}_dataloader")()
        if split not in self.data:
            return []
        train = split == "train"
        n = len(self.data[split]["index"])
        bs = int(self.source.hparams["batch_size"])
        return DataLoader(
            CachedClipDataset(self.data[split], self.inputs), batch_size=bs, shuffle=train, drop_last=train and n > bs
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test")
