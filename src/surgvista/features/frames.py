"""Per-frame feature extraction for two-stage temporal models (TeCNO), cached on disk.

A frozen backbone is run once over every (``frame_stride``-th) manifest frame: an image backbone on the frame
itself, a video backbone on the online causal clip ending at that frame. Frames are squashed to
``input_size``² and ImageNet-normalised, as the reference's test transform. Each video is written to
``<cache_root>/<key>/<dataset>/<video_id>.pt`` = ``{"features": (N, D) float, "labels": (N,) int64,
"frames": (N,) int64 manifest frame ids, "video_id", "dataset", "fps", "media"}``; ``<key>`` is a digest of
everything that determines the features (backbone config, the *contents* of every checkpoint file it names,
the clip geometry, the preprocessing and :data:`FEATURE_VERSION`), so a changed backbone gets a new folder and
a stale cache is never reused. A video whose file exists with the same media fingerprint is skipped (resumable);
files are written atomically. Labels come from the manifest (``-1`` = unannotated) and are refreshed in place
when only they changed.

CLI (Hydra overrides of ``conf/train.yaml``; runs the extraction that ``data=features`` would run)::

    python -m surgvista.features extract experiment=tecno_cholec80 paths.data_dir=/datasets
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from surgvista.checkpoints.load import LoadReport, load_backbone, load_matching
from surgvista.checkpoints.read import read_state, torch_load
from surgvista.data.manifest import VideoEntry, read_manifest
from surgvista.data.readers import EntryReader
from surgvista.data.sampling import causal_clip_indices
from surgvista.data.transforms import to_normalized_clip
from surgvista.features.digest import content_digest, media_fingerprint, payload_key
from surgvista.features.runtime import autocast, torch_device
from surgvista.utils.errors import UserError
from surgvista.utils.io import atomic_torch_save
from surgvista.utils.seeding import seeded

log = logging.getLogger(__name__)

FEATURE_VERSION = 1
INPUT_KINDS = ("video", "image")
POOL_KINDS = ("pre_logits", "mean_tokens")
# Extractor settings that change the features (part of the cache key); the others only change speed.
KEY_FIELDS = (
    "backbone",
    "ckpt",
    "ckpt_prefix",
    "seed",
    "input",
    "clip_len",
    "clip_stride",
    "input_size",
    "pool",
    "frame_stride",
    "dtype",
    "module_attr",
)
DEFAULTS = {
    "backbone": None,
    "ckpt": None,
    "ckpt_prefix": None,
    "ckpt_strict": True,
    "seed": 0,
    "input": "video",
    "clip_len": 16,
    "clip_stride": 4,
    "input_size": 224,
    "pool": "pre_logits",
    "frame_stride": 1,
    "dtype": "float32",
    "module_attr": None,
    "batch_size": 32,
    "device": "auto",
    "autocast": None,
    "backend": "decord",
    "read_chunk": 64,
}


class FeatureCacheError(UserError, RuntimeError):
    """A cache file that does not hold what the manifest and the extractor settings say it should."""


def resolve_settings(settings: Mapping) -> dict:
    """Extractor settings with defaults filled in; unknown keys and bad values are errors naming them."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown feature extractor setting(s) {unknown}; expected some of {sorted(DEFAULTS)}")
    if isinstance(settings, DictConfig):
        settings = OmegaConf.to_container(settings, resolve=True)
    s = {**DEFAULTS, **dict(settings)}
    if not isinstance(s["backbone"], Mapping) or "_target_" not in s["backbone"]:
        raise ValueError(f"extractor.backbone must be a config with a _target_, got {s['backbone']!r}")
    if s["input"] not in INPUT_KINDS:
        raise ValueError(f"extractor.input {s['input']!r} is not one of {INPUT_KINDS}")
    if s["pool"] not in POOL_KINDS:
        raise ValueError(f"extractor.pool {s['pool']!r} is not one of {POOL_KINDS}")
    if s["input"] == "image" and s["clip_len"] != 1:
        raise ValueError(f"extractor.input=image needs clip_len=1, got {s['clip_len']}")
    for name in ("clip_len", "clip_stride", "input_size", "frame_stride", "batch_size", "read_chunk"):
        if int(s[name]) < 1:
            raise ValueError(f"extractor.{name} must be >= 1, got {s[name]}")
    if s["dtype"] not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"extractor.dtype {s['dtype']!r} is not one of float32|float16|bfloat16")
    return s


def cache_key(settings: Mapping) -> str:
    """Digest (16 hex) of everything that determines the features; checkpoint files enter by content."""
    s = resolve_settings(settings)
    payload = {"version": FEATURE_VERSION, **{k: content_digest(s[k], folders=False) for k in KEY_FIELDS}}
    payload["ckpt"] = content_digest(s["ckpt"])  # a checkpoint file, or an HF folder by its files
    return payload_key(payload)


def frame_labels(entry: VideoEntry, label: str, frames: Sequence[int], where: str) -> torch.Tensor:
    """Per-frame ``label`` ids of ``entry`` at ``frames`` (``-1`` = unannotated)."""
    values = entry.labels.get(label)
    if not isinstance(values, list):
        raise FeatureCacheError(
            f"{where}: video {entry.video_id} has no per-frame {label!r} labels (labels: {sorted(entry.labels)})"
        )
    return torch.tensor([-1 if values[i] is None else int(values[i]) for i in frames], dtype=torch.long)


def load_backbone_weights(
    module: nn.Module, path: str | Path, prefix: str | None = None, strict: bool = True
) -> LoadReport:
    """Load a checkpoint into ``module``; with ``prefix`` only the keys starting with it (stripped).

    ``VideoClassifier``/``SurgVISTAStudent`` go through :func:`surgvista.checkpoints.load.load_backbone` (every
    supported layout); other modules (e.g. timm models) take the state dict under their own key names
    (:func:`surgvista.checkpoints.load.load_matching`).
    """
    from surgvista.models.classifier import VideoClassifier
    from surgvista.models.student import SurgVISTAStudent

    ours = isinstance(module, (VideoClassifier, SurgVISTAStudent))
    if ours and not prefix:
        return load_backbone(path, module, strict=strict)
    source = read_state(path)
    state = source.state
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise FeatureCacheError(f"backbone checkpoint {path}: no key starts with ckpt_prefix {prefix!r}")
    if ours:
        return load_backbone(state, module, strict=strict)
    name = f"{source.name} (ckpt_prefix {prefix!r})" if prefix else source.name
    return load_matching(state, module, source=name, strict=strict)


class FrameFeatureExtractor(nn.Module):
    """A frozen backbone mapping clips ``(B, 3, T, H, W)`` (``input=image``: frames ``(B, 3, H, W)``) to ``(B, D)``.

    ``pool="pre_logits"``: ``forward_head(forward_features(x), pre_logits=True)`` (VideoClassifier: mean of the
    tokens → ``fc_norm``; timm models: their own pooling); ``"mean_tokens"``: mean of ``forward_features(x)``.
    """

    def __init__(self, backbone: nn.Module, input: str = "video", pool: str = "pre_logits") -> None:
        super().__init__()
        for name in ("forward_features",) + (("forward_head",) if pool == "pre_logits" else ()):
            if not callable(getattr(backbone, name, None)):
                raise TypeError(f"feature backbone {type(backbone).__name__} has no {name}() (pool={pool!r})")
        self.backbone, self.input, self.pool = backbone.eval().requires_grad_(False), input, pool

    def train(self, mode: bool = True) -> FrameFeatureExtractor:
        return super().train(False)

    @torch.inference_mode()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips[:, :, 0] if self.input == "image" else clips
        tokens = self.backbone.forward_features(x)
        if self.pool == "pre_logits":
            return self.backbone.forward_head(tokens, pre_logits=True)
        return tokens.mean(1) if tokens.ndim == 3 else tokens


def build_extractor(settings: Mapping) -> FrameFeatureExtractor:
    """Instantiate the (seeded) backbone of ``settings``, load its checkpoint, wrap it."""
    s = resolve_settings(settings)
    with seeded(int(s["seed"])):
        backbone = instantiate(s["backbone"], _convert_="all")
    if s["ckpt"]:
        load_backbone_weights(backbone, s["ckpt"], s["ckpt_prefix"], bool(s["ckpt_strict"]))
    if s["module_attr"]:
        backbone = getattr(backbone, s["module_attr"])
    return FrameFeatureExtractor(backbone, s["input"], s["pool"])


def extract_video(
    extractor: FrameFeatureExtractor, reader: EntryReader, entry: VideoEntry, settings: Mapping, device: torch.device
) -> tuple[torch.Tensor, list[int]]:
    """Features ``(N, D)`` of every ``frame_stride``-th frame of ``entry``, each frame decoded once.

    Frames are read in order into a buffer that keeps only what later causal clips still need.
    """
    s = settings
    clip_len, stride, size = int(s["clip_len"]), int(s["clip_stride"]), int(s["input_size"])
    span = (clip_len - 1) * stride
    anchors = list(range(0, entry.num_frames, int(s["frame_stride"])))
    batch = int(s["batch_size"])
    amp = autocast(device, s["autocast"])
    buffer: dict[int, torch.Tensor] = {}
    out = []
    for start in range(0, len(anchors), batch):
        chunk = anchors[start : start + batch]
        clips = [causal_clip_indices(a, clip_len, stride) for a in chunk]
        todo = sorted({i for c in clips for i in c} - buffer.keys())
        for r in range(0, len(todo), int(s["read_chunk"])):
            ids = todo[r : r + int(s["read_chunk"])]
            frames = to_normalized_clip(torch.from_numpy(reader.read(entry, ids)), size)  # (3, n, size, size)
            buffer.update(zip(ids, frames.unbind(1)))
        x = torch.stack([torch.stack([buffer[i] for i in c], 1) for c in clips]).to(device)
        with amp:
            out.append(extractor(x).float().cpu())
        nxt = anchors[start + batch] if start + batch < len(anchors) else entry.num_frames
        floor = nxt - span if nxt >= span else 0
        for i in [i for i in buffer if i < floor]:
            del buffer[i]
    return torch.cat(out).to(getattr(torch, s["dtype"])), anchors


def _unique_entries(manifests: Iterable[str | Path]) -> list[tuple[VideoEntry, str]]:
    seen: dict[tuple[str, str], tuple[VideoEntry, str]] = {}
    for m in manifests:
        for e in read_manifest(m).entries:
            key = (e.dataset, e.video_id)
            if key in seen and (seen[key][0].source != e.source or seen[key][0].labels != e.labels):
                raise FeatureCacheError(
                    f"video {e.dataset}/{e.video_id} appears in {seen[key][1]} and {m} with "
                    "different sources or labels; video ids must be unique per dataset"
                )
            seen.setdefault(key, (e, str(m)))
    return list(seen.values())


def cache_dir(cache_root: str | Path, settings: Mapping) -> Path:
    """``<cache_root>/<key>`` of ``settings``."""
    return Path(cache_root) / cache_key(settings)


def video_cache_path(directory: Path, entry: VideoEntry) -> Path:
    """Cache file of one video inside a cache folder."""
    return directory / entry.dataset / f"{entry.video_id}.pt"


def extract_features(
    settings: Mapping,
    manifests: Iterable[str | Path],
    cache_root: str | Path,
    label: str = "phase",
    progress: bool = True,
) -> Path:
    """Extract every video of ``manifests`` not yet cached under ``<cache_root>/<key>``; return that folder.

    The backbone is only built when some video is missing or stale.
    """
    s = resolve_settings(settings)
    directory = cache_dir(cache_root, s)
    entries = _unique_entries(manifests)
    todo = [(entry, where) for entry, where in entries if not _cached(directory, entry, label, where)]
    directory.mkdir(parents=True, exist_ok=True)
    _write_extractor_meta(directory, s)
    if not todo:
        log.info("feature cache %s: all %d videos present", directory, len(entries))
        return directory
    log.info("feature cache %s: extracting %d of %d videos", directory, len(todo), len(entries))
    _extract_into(directory, todo, s, label, progress)
    return directory


def _cached(directory: Path, entry: VideoEntry, label: str, where: str) -> bool:
    """True when ``entry``'s cache file holds features of the same media (labels changed in the manifest are
    updated in place); False when it is missing or was made from other media."""
    path, media = video_cache_path(directory, entry), media_fingerprint(entry)
    if not path.is_file():
        return False
    cached = torch_load(path)
    if cached.get("media") != media:
        log.warning(
            "feature cache %s was made from different media (%s, now %s): re-extracting",
            path,
            cached.get("media"),
            media,
        )
        return False
    labels = frame_labels(entry, label, cached["frames"].tolist(), where)
    if not torch.equal(labels, cached["labels"]):
        log.info("feature cache %s: labels changed in the manifest, updating them", path)
        atomic_torch_save({**cached, "labels": labels}, path)
    return True


def _write_extractor_meta(directory: Path, s: dict) -> None:
    """``<directory>/extractor.json``: the key, the settings that determine the features, the checkpoint digests."""
    meta = {
        "version": FEATURE_VERSION,
        "key": directory.name,
        "settings": {k: s[k] for k in KEY_FIELDS},
        "checkpoints": content_digest(s["ckpt"]),
    }
    (directory / "extractor.json").write_text(json.dumps(meta, indent=1, default=str))


def _extract_into(directory: Path, todo: list[tuple[VideoEntry, str]], s: dict, label: str, progress: bool) -> None:
    """Build the extractor once and write the cache file of every video of ``todo`` (atomically)."""
    device = torch_device(str(s["device"]))
    extractor = build_extractor(s).to(device)
    reader = EntryReader(s["backend"])
    bar = tqdm(todo, desc="features", unit="video", disable=not progress)
    for entry, where in bar:
        bar.set_postfix_str(f"{entry.dataset}/{entry.video_id}")
        feats, frames = extract_video(extractor, reader, entry, s, device)
        path = video_cache_path(directory, entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(
            {
                "features": feats,
                "labels": frame_labels(entry, label, frames, where),
                "frames": torch.tensor(frames, dtype=torch.long),
                "video_id": entry.video_id,
                "dataset": entry.dataset,
                "fps": (entry.fps / int(s["frame_stride"])) if entry.fps else None,
                "media": media_fingerprint(entry),
            },
            path,
        )
