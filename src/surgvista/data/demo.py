"""Embedded demo dataset: small, seeded mp4 videos of synthetic laparoscopic "surgery".

Each video runs through the 7 Cholec80 phases in order. Phases differ in the instruments present (grasper,
hook, clipper, bag, irrigator), their motion, the camera drift and the appearance of the scene (fat,
gallbladder, clips, blood, smoke). Labels are written in the official Cholec80 ``Frame<TAB>Phase`` format at
the native frame rate, and the train/val manifests sample them at ``manifest_fps``.

Command: ``surgvista-demo-data --out data/demo`` (``python -m surgvista.demo_data``). ``variant="proxy"``
(``--variant proxy``) writes the same layout with :mod:`surgvista.data.proxy`'s videos instead: phases carried by
instrument shape, motion and scene events, every colour random per video (docs/proxy.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from surgvista.data.annotations import CHOLEC80_PHASES, read_phase_file, write_phase_file
from surgvista.data.manifest import ManifestError, VideoEntry, read_manifest, write_manifest
from surgvista.data.proxy import PROXY_VERSION, segment_distance, write_proxy_video
from surgvista.data.video_writer import write_h264
from surgvista.utils.io import atomic_write_text

GENERATOR_VERSION = 1
VARIANTS = ("demo", "proxy")  # the demo's colour-coded phases | the proxy's shape/motion/event-coded phases
# Per phase: instruments, motion speed, camera drift speed, scene effects.
PHASE_SCRIPT = (
    {"tools": ("grasper",), "speed": 0.4, "drift": 0.3, "effects": ()},
    {"tools": ("grasper", "hook"), "speed": 1.0, "drift": 0.6, "effects": ("fat",)},
    {"tools": ("grasper", "clipper"), "speed": 0.7, "drift": 0.2, "effects": ("fat", "clips")},
    {"tools": ("grasper", "hook"), "speed": 1.6, "drift": 0.8, "effects": ("gallbladder", "clips")},
    {"tools": ("bag",), "speed": 0.5, "drift": 0.4, "effects": ("gallbladder",)},
    {"tools": ("irrigator", "grasper"), "speed": 1.2, "drift": 0.5, "effects": ("blood", "smoke")},
    {"tools": ("grasper",), "speed": 0.8, "drift": 1.2, "effects": ("gallbladder", "exit")},
)
TOOL_COLORS = {
    "grasper": (60, 60, 70), "hook": (150, 150, 160), "clipper": (40, 80, 140),
    "bag": (230, 230, 215), "irrigator": (200, 190, 60),
}


def _smooth_noise(rng: np.random.Generator, h: int, w: int, octaves=(8, 16, 32)) -> np.ndarray:
    acc = np.zeros((h, w), np.float32)
    for i, cells in enumerate(octaves):
        small = rng.random((max(2, h * cells // w), cells)).astype(np.float32)
        img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        acc += np.asarray(img, np.float32) / 255 / 2**i
    return acc / acc.max()


def _blob(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) * 2).astype(np.float32)


class _Scene:
    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.h, self.w, self.rng = height, width, rng
        th, tw = 2 * height, 2 * width
        tex = _smooth_noise(rng, th, tw)
        veins = np.sin(_smooth_noise(rng, th, tw, (4, 8)) * 25) ** 8
        self.tissue = np.stack([0.75 + 0.2 * tex, 0.3 + 0.2 * tex - 0.15 * veins, 0.3 + 0.15 * tex], -1)
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        r = np.hypot((self.yy - height / 2) / height, (self.xx - width / 2) / width)
        self.vignette = np.clip(1.25 - 1.6 * r, 0, 1)[..., None] ** 0.7
        self.angles = {t: rng.uniform(0, 2 * np.pi) for t in TOOL_COLORS}
        self.phases = rng.uniform(0, 2 * np.pi, size=8)
        self.clip_spots = rng.uniform(0.3, 0.7, size=(4, 2))

    def render(self, time: float, phase: int, progress: float) -> np.ndarray:
        spec = PHASE_SCRIPT[phase]
        h, w, yy, xx = self.h, self.w, self.yy, self.xx
        cam = spec["drift"] * time
        oy = int((0.5 + 0.4 * np.sin(0.3 * cam + self.phases[0])) * h)
        ox = int((0.5 + 0.4 * np.cos(0.23 * cam + self.phases[1])) * w)
        img = self.tissue[oy:oy + h, ox:ox + w].copy()
        fx = spec["effects"]
        if "fat" in fx:
            a = _blob(yy, xx, 0.4 * h, 0.6 * w, 0.3 * h, 0.35 * w)[..., None] * 0.8
            img = img * (1 - a) + a * np.array([0.95, 0.85, 0.45])
        if "gallbladder" in fx:
            cy = 0.45 + (0.7 * progress if "exit" in fx else 0.05 * np.sin(time))
            a = _blob(yy, xx, cy * h, 0.45 * w, 0.22 * h, 0.28 * w)[..., None] * 0.9
            img = img * (1 - a) + a * np.array([0.35, 0.6, 0.3])
        if "clips" in fx:
            for sy, sx in self.clip_spots:
                m = (np.abs(yy - sy * h) < 1.5) & (np.abs(xx - sx * w) < 4)
                img[m] = (0.9, 0.9, 0.95)
        if "blood" in fx:
            a = _blob(yy, xx, 0.6 * h, 0.35 * w, 0.1 * h * (1 + progress), 0.12 * w * (1 + progress))
            img = img * (1 - a[..., None]) + a[..., None] * np.array([0.45, 0.02, 0.02])
        for k, tool in enumerate(spec["tools"]):
            img = self._draw_tool(img, tool, time * spec["speed"] + self.phases[2 + k], k)
        if "smoke" in fx:
            haze = 0.5 * progress * (0.6 + 0.4 * np.sin(xx / w * 6 + time))[..., None]
            img = img * (1 - haze) + haze * 0.85
        img = img * self.vignette + self.rng.normal(0, 0.01, img.shape)
        return (np.clip(img, 0, 1) * 255).astype(np.uint8)

    def _draw_tool(self, img: np.ndarray, tool: str, t: float, slot: int) -> np.ndarray:
        h, w = self.h, self.w
        ang = self.angles[tool] + 0.3 * np.sin(0.5 * t)
        y0, x0 = h / 2 + 1.2 * h * np.sin(ang), w / 2 + 1.2 * w * np.cos(ang)
        reach = 0.15 + 0.25 * (1 + np.sin(t)) / 2 + 0.1 * slot
        y1 = h / 2 + (y0 - h / 2) * reach + 0.15 * h * np.sin(1.7 * t)
        x1 = w / 2 + (x0 - w / 2) * reach + 0.15 * w * np.cos(1.3 * t)
        dist, along = segment_distance(self.yy, self.xx, y0, x0, y1, x1)
        width = 0.035 * w * (1.6 if tool == "bag" else 1.0)
        shaft = (dist < width)[..., None]
        shade = 0.7 + 0.3 * np.cos(dist / width * np.pi / 2)[..., None]
        color = np.array(TOOL_COLORS[tool]) / 255 * shade
        tip = shaft & (along > 0.9)[..., None]
        img = np.where(shaft, color, img)
        return np.where(tip, np.clip(color * 1.5 + 0.1, 0, 1), img)


def _phase_lengths(rng: np.random.Generator, total: int) -> list[int]:
    weights = rng.uniform(0.6, 1.4, len(PHASE_SCRIPT))
    lengths = np.maximum((weights / weights.sum() * total).astype(int), 8)
    lengths[1] += total - lengths.sum()
    return lengths.tolist()


def write_demo_video(path: Path, label_path: Path, seed: int, num_frames: int, size: tuple[int, int],
                     fps: int) -> list[int]:
    """Render one seeded video to ``path`` (h264 mp4, GOP 12) and its Cholec80-format labels."""
    rng = np.random.default_rng(seed)
    width, height = size
    scene = _Scene(rng, height, width)
    lengths = _phase_lengths(rng, num_frames)
    phases = [p for p, n in enumerate(lengths) for _ in range(n)]
    starts = np.cumsum([0, *lengths[:-1]])
    frames = (scene.render(i / fps, p, (i - starts[p]) / max(1, lengths[p])) for i, p in enumerate(phases))
    write_h264(path, frames, fps, size)
    write_phase_file(label_path, phases)
    return phases


def generate_demo_dataset(
    root: str | Path,
    num_videos: int = 8,
    num_val_videos: int = 2,
    frames_per_video: tuple[int, int] = (300, 420),
    size: tuple[int, int] = (160, 128),
    fps: int = 25,
    manifest_fps: float = 5.0,
    seed: int = 0,
    variant: str = "demo",
) -> tuple[Path, Path]:
    """Write the demo (or ``variant="proxy"``) videos, labels and ``train.jsonl`` / ``val.jsonl`` under ``root``
    (skipped if done)."""
    root = Path(root).resolve()  # absolute sources: the manifests do not depend on the working directory
    params = {"version": GENERATOR_VERSION, "num_videos": num_videos, "num_val_videos": num_val_videos,
              "frames": list(frames_per_video), "size": list(size), "fps": fps, "manifest_fps": manifest_fps,
              "seed": seed}
    if variant not in VARIANTS:
        raise ValueError(f"unknown demo variant {variant!r}; expected one of {VARIANTS}")
    if variant != "demo":  # the demo's stamp stays as it always was
        params.update(variant=variant, variant_version=PROXY_VERSION)
    write_video = write_demo_video if variant == "demo" else write_proxy_video
    stamp = root / "demo_params.json"
    train, val = root / "train.jsonl", root / "val.jsonl"
    if stamp.is_file() and json.loads(stamp.read_text()) == params and _readable(train, val):
        return train, val
    if not 0 < num_val_videos < num_videos:
        raise ValueError(f"need 0 < num_val_videos < num_videos, got {num_val_videos} and {num_videos}")
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "phase_annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(frames_per_video[0], frames_per_video[1] + 1, size=num_videos)
    entries = []
    step = fps / manifest_fps
    for v in tqdm(range(num_videos), desc=f"{variant} videos", unit="video"):
        name = f"video{v + 1:02d}"
        video = root / "videos" / f"{name}.mp4"
        label_file = root / "phase_annotations" / f"{name}-phase.txt"
        write_video(video, label_file, seed * 1000 + v, int(lengths[v]), size, fps)
        native = read_phase_file(label_file)
        count = int((len(native) - 1) / step) + 1
        labels = [native[int(round(i * step))] for i in range(count)]
        entries.append(VideoEntry("demo", name, "video", video, count, manifest_fps, {"phase": labels}))
    meta = {"version": 1, "label_names": {"phase": list(CHOLEC80_PHASES)}}
    n_train = num_videos - num_val_videos
    write_manifest(train, entries[:n_train], meta)
    write_manifest(val, entries[n_train:], meta)
    atomic_write_text(stamp, json.dumps(params))
    return train, val


@dataclass(frozen=True)
class DemoSet:
    """The demo dataset of a demo data module (its config names): manifests under ``root``, written on first use."""

    root: Path
    num_videos: int = 8
    num_val_videos: int = 2
    video_frames: Sequence[int] = (300, 420)
    video_size: Sequence[int] = (160, 128)
    seed: int = 0
    variant: str = "demo"

    @property
    def train_manifest(self) -> str:
        return str(self.root / "train.jsonl")

    @property
    def val_manifest(self) -> str:
        return str(self.root / "val.jsonl")

    def generate(self) -> tuple[Path, Path]:
        """Write the dataset unless it is there already (:func:`generate_demo_dataset`)."""
        return generate_demo_dataset(
            self.root,
            self.num_videos,
            self.num_val_videos,
            frames_per_video=tuple(self.video_frames),
            size=tuple(self.video_size),
            seed=self.seed,
            variant=self.variant,
        )


def _readable(*manifests: Path) -> bool:
    """True when every manifest exists and points at existing media (else the demo set is regenerated)."""
    try:
        for m in manifests:
            read_manifest(m)
    except (OSError, ManifestError):
        return False
    return True
