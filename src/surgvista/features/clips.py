"""Frozen-backbone features of a downstream task's clips, extracted once and cached (frozen-probe protocols).

Every sample of a downstream data module is read with the evaluation transform (all splits) and run once through
a :mod:`surgvista.models.zoo` backbone. Stored per sample: ``pooled (D,)`` float32, ``tokens (K, D)``
(``token_dtype``, at most ``max_tokens``), ``target``, ``video_index``, ``frame_index``, ``index``. Cache layout,
key and resumption: docs/benchmark.md (the clip-feature cache).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from surgvista.data.manifest import read_manifest
from surgvista.features.digest import content_digest, media_fingerprint, payload_key
from surgvista.features.frames import FeatureCacheError
from surgvista.features.runtime import autocast, torch_device
from surgvista.utils.errors import ConfigError
from surgvista.utils.io import atomic_torch_save, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

CLIP_FEATURE_VERSION = 1
SPLITS = ("train", "val", "test")
STORAGE_KEY_FIELDS = ("max_tokens", "token_dtype", "shard_size")
# Data-module settings that change the samples or their features (the others only change speed or training).
GEOMETRY_FIELDS = (
    "label",
    "num_classes",
    "sampler",
    "multilabel",
    "num_frames",
    "sampling_rate",
    "input_size",
    "eval_views",
    "val_target_stride",
    "test_target_stride",
)


def clip_cache_key(backbone: Mapping, source, storage: Mapping) -> str:
    """Digest (16 hex) of the backbone config, the split manifests and their videos (size, frames, sha256 as
    :func:`surgvista.features.digest.media_fingerprint`), the clip geometry and ``storage``."""
    splits = {s: m for s, m in source.manifests().items() if m}
    geometry = {k: source.hparams.get(k) for k in GEOMETRY_FIELDS}
    if source.hparams.get("train_target_stride", 1) != 1:  # only then: caches written before the option keep their key
        geometry["train_target_stride"] = source.hparams["train_target_stride"]
    return payload_key(
        {
            "version": CLIP_FEATURE_VERSION,
            "backbone": content_digest(backbone),
            "manifests": {s: sha256_file(m) for s, m in splits.items()},
            "media": {s: [media_fingerprint(e) for e in read_manifest(m).entries] for s, m in splits.items()},
            "geometry": geometry,
            "storage": dict(storage),
        }
    )


def pool_tokens(tokens: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """``(B, N, D)`` → ``(B, min(N, max_tokens), D)`` by average pooling along the token sequence."""
    if tokens.shape[1] <= max_tokens:
        return tokens
    return F.adaptive_avg_pool1d(tokens.transpose(1, 2), max_tokens).transpose(1, 2)


def chunked_features(backbone, video: torch.Tensor, chunk_frames: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``backbone.features`` of clips ``(B, 3, T, H, W)`` in temporal chunks of ``chunk_frames`` (e.g. a 64-frame
    clip through a 16-frame backbone): the chunks run one after another, their tokens are concatenated in time order
    and their pooled vectors averaged. ``None`` or ``chunk_frames >= T``: one call. ``T`` must be a multiple."""
    t = video.shape[2]
    if not chunk_frames or chunk_frames >= t:
        return backbone.features(video)
    if t % chunk_frames:
        raise ConfigError(f"data.chunk_frames={chunk_frames}: the clip's {t} frames are not a multiple of it")
    tokens, pooled = [], []
    for chunk in video.split(chunk_frames, dim=2):
        tok, pool = backbone.features(chunk)
        tokens.append(tok)
        pooled.append(pool)
    return torch.cat(tokens, 1), torch.stack(pooled).mean(0)


class ClipFeatureCache:
    """The cache folder of one (backbone, data, storage) configuration: what is there, and filling what is not."""

    def __init__(self, cache_root: str | Path, backbone: Mapping, source, storage: Mapping) -> None:
        self.backbone_cfg, self.source, self.storage = dict(backbone), source, dict(storage)
        self.cache_root = Path(cache_root)

    @functools.cached_property
    def directory(self) -> Path:
        """``<cache_root>/clips/<key>`` (computed on first use: the manifests must exist by then)."""
        key_storage = {k: self.storage[k] for k in STORAGE_KEY_FIELDS}
        if self.storage.get("chunk_frames"):  # only when set: caches extracted before the option keep their key
            key_storage["chunk_frames"] = int(self.storage["chunk_frames"])
        return self.cache_root / "clips" / clip_cache_key(self.backbone_cfg, self.source, key_storage)

    def splits(self) -> dict[str, str]:
        """Split → manifest of the source data module; ``test`` is left out when it is ``val`` (see ``alias``)."""
        out = {s: m for s, m in self.source.manifests().items() if m}
        if self.alias("test"):
            del out["test"]
        return out

    def alias(self, split: str) -> str | None:
        """``"val"`` for ``test`` when both read the same manifest with the same target stride (stored once)."""
        hp, manifests = self.source.hparams, self.source.manifests()
        same = manifests.get("val") and manifests.get("test") == manifests["val"]
        if split == "test" and same and hp.get("val_target_stride") == hp.get("test_target_stride"):
            return "val"
        return None

    def shard_paths(self, split: str, num_samples: int) -> list[Path]:
        n = math.ceil(num_samples / int(self.storage["shard_size"]))
        return [self.directory / split / f"shard_{i:05d}.pt" for i in range(n)]

    @property
    def meta_path(self) -> Path:
        return self.directory / "meta.json"

    def meta(self) -> dict:
        if not self.meta_path.is_file():
            raise FileNotFoundError(f"no clip-feature cache at {self.directory}: run the extraction (prepare_data)")
        return json.loads(self.meta_path.read_text())

    def load(self, split: str) -> dict[str, torch.Tensor]:
        """Every cached sample of ``split`` concatenated: pooled, tokens, target, video_index, frame_index, index."""
        split = self.alias(split) or split
        count = self.meta()["splits"][split]
        shards = [torch.load(p, map_location="cpu", weights_only=True) for p in self.shard_paths(split, count)]
        out = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
        if len(out["index"]) != count:
            raise FeatureCacheError(
                f"{self.directory}/{split}: {len(out['index'])} cached samples, meta.json says {count}: delete it"
            )
        return out

    def extract(self, progress: bool = True) -> Path:
        """Extract every missing shard (the backbone is built only if one is missing); write ``meta.json``."""
        datasets = {s: self.source._dataset(s, m, train=False) for s, m in self.splits().items()}
        todo = {s: [p for p in self.shard_paths(s, len(d)) if not p.is_file()] for s, d in datasets.items()}
        if self.meta_path.is_file() and not any(todo.values()):
            log.info("clip-feature cache %s: complete (%s)", self.directory, self.meta()["splits"])
            return self.directory
        old = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        backbone, device = None, torch_device(str(self.storage.get("device", "auto")))
        clips, seconds = 0, 0.0
        for split, ds in datasets.items():
            for path in todo[split]:
                if backbone is None:
                    backbone = instantiate(self.backbone_cfg, _convert_="all").eval().requires_grad_(False).to(device)
                    log.info("clip-feature cache %s: extracting with %s", self.directory, type(backbone).__name__)
                start = time.perf_counter()
                shard = self._extract_shard(backbone, ds, split, int(path.stem.split("_")[1]), device, progress)
                seconds += time.perf_counter() - start
                clips += len(shard["index"])
                atomic_torch_save(shard, path)
        meta = {
            "version": CLIP_FEATURE_VERSION,
            "backbone": self.backbone_cfg,
            "backbone_class": type(backbone).__name__ if backbone else old.get("backbone_class"),
            "params": backbone.num_params() if backbone else old.get("params"),
            "embed_dim": backbone.embed_dim if backbone else old.get("embed_dim"),
            "device": str(device),
            "extracted_clips": clips + old.get("extracted_clips", 0),
            "extraction_s": seconds + old.get("extraction_s", 0.0),
            "splits": {s: len(d) for s, d in datasets.items()},
            "video_ids": {s: [e.video_id for e in d.entries] for s, d in datasets.items()},
            "aliases": {s: self.alias(s) for s in SPLITS if self.alias(s)},
            "label_names": next((d.label_names for d in datasets.values() if d.label_names), None),
            "storage": self.storage,
        }
        meta["clips_per_s"] = meta["extracted_clips"] / meta["extraction_s"] if meta["extraction_s"] else None
        atomic_write_text(self.meta_path, json.dumps(meta, indent=1, default=str))
        return self.directory

    @torch.inference_mode()
    def _extract_shard(self, backbone, ds, split: str, shard: int, device: torch.device, progress: bool) -> dict:
        size = int(self.storage["shard_size"])
        indices = range(shard * size, min((shard + 1) * size, len(ds)))
        hp = self.source.hparams
        loader = DataLoader(
            Subset(ds, indices),
            batch_size=int(hp.get("eval_batch_size") or hp["batch_size"]),
            num_workers=int(hp.get("num_workers", 0)),
        )
        amp = autocast(device, self.storage.get("autocast"))
        keys = ("target", "video_index", "frame_index", "index")
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("pooled", "tokens", *keys)}
        bar = tqdm(loader, desc=f"features {split}[{shard}]", unit="batch", disable=not progress)
        for batch in bar:
            video = batch["video"].to(device)
            views = video.shape[1] if video.ndim == 6 else 1  # (B, V, C, T, H, W): average the views' features
            with amp:
                tokens, pooled = chunked_features(
                    backbone, video.flatten(0, 1) if views > 1 else video, self.storage.get("chunk_frames")
                )
            tokens = pool_tokens(tokens.float(), int(self.storage["max_tokens"]))
            if views > 1:
                tokens = tokens.view(-1, views, *tokens.shape[1:]).mean(1)
                pooled = pooled.view(-1, views, pooled.shape[-1]).mean(1)
            parts["pooled"].append(pooled.float().cpu())
            parts["tokens"].append(tokens.to(getattr(torch, self.storage["token_dtype"])).cpu())
            for k in keys:
                parts[k].append(torch.as_tensor(batch[k]))
        return {k: torch.cat(v) for k, v in parts.items()}  # index: the dataset's own (Subset maps them)
