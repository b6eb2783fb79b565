"""The proxy variant of the demo videos: phases carried by instrument shape, motion and scene events, not colour.

Each video runs through the 7 Cholec80 phases in order, like the demo, but every colour is drawn at random per
video: the tissue (two palette colours mixed by a random texture, veins of a third), the instruments (one metal
colour shared by all of them), the organ, the clips and the bleeding spots; the illumination (gain, white
balance, vignette, a slow flicker unrelated to the phases) and the sensor noise are random per video as well.
A phase is told apart only by what the frames *show*:

- the **shape** of its two instruments (grasper: two jaws that open and close; hook: an L tip; clipper: two
  parallel prongs; bag: a ring; irrigator: a disc) — every phase has two, all shafts equally wide;
- their **motion** (slow, jittery, steady in-and-out, wide sweep);
- **scene events** in time: clips appear one by one (clipping) and stay; the organ wobbles (dissection),
  shrinks (packaging), is gone (cleaning, with pulsing spots) and leaves the frame (retraction).

The design (docs/proxy.md) is fixed: it is not tuned towards any objective's result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from surgvista.data.annotations import write_phase_file
from surgvista.data.video_writer import write_h264

PROXY_VERSION = 1
# Per phase: the two instruments, their motion, the scene event, the organ's state.
PROXY_SCRIPT = (
    {"tools": ("grasper", "grasper"), "motion": "slow", "event": None, "organ": "rest"},
    {"tools": ("grasper", "hook"), "motion": "jitter", "event": None, "organ": "rest"},
    {"tools": ("grasper", "clipper"), "motion": "steady", "event": "clipping", "organ": "rest"},
    {"tools": ("grasper", "hook"), "motion": "sweep", "event": None, "organ": "wobble"},
    {"tools": ("grasper", "bag"), "motion": "slow", "event": None, "organ": "shrink"},
    {"tools": ("irrigator", "grasper"), "motion": "jitter", "event": "pulses", "organ": "gone"},
    {"tools": ("grasper", "grasper"), "motion": "steady", "event": None, "organ": "exit"},
)
# Per motion: speed of the slow cycle, amplitude of the fast tremor, angular sweep (radians).
MOTIONS = {
    "slow": (0.35, 0.0, 0.15),
    "jitter": (1.4, 0.04, 0.2),
    "steady": (0.8, 0.0, 0.1),
    "sweep": (0.9, 0.0, 0.9),
}
NUM_CLIPS = 4


def random_color(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour in [0, 1] with uniform hue, saturation 0.15-0.9 and value 0.3-0.95."""
    hsv = np.array([rng.random(), rng.uniform(0.15, 0.9), rng.uniform(0.3, 0.95)])
    rgb = Image.fromarray((hsv.reshape(1, 1, 3) * 255).astype(np.uint8), "HSV").convert("RGB")
    return np.asarray(rgb, np.float32).reshape(3) / 255


def contrasting_color(rng: np.random.Generator, background: float, contrast: float = 0.2) -> np.ndarray:
    """A :func:`random_color` whose mean brightness differs from ``background`` by at least ``contrast``
    (the instruments stay visible; brighter or darker at random, so brightness is no phase cue)."""
    while True:
        color = random_color(rng)
        if abs(float(color.mean()) - background) >= contrast:
            return color


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, ...]) -> np.ndarray:
    """Sum of bicubic-upsampled random grids with ``cells`` columns each, scaled to [0, 1]."""
    acc = np.zeros((h, w), np.float32)
    for i, c in enumerate(cells):
        small = rng.random((max(2, h * c // w), c)).astype(np.float32)
        img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        acc += np.asarray(img, np.float32) / 255 / 2**i
    acc -= acc.min()
    return acc / max(float(acc.max()), 1e-6)


def segment_distance(yy, xx, y0, x0, y1, x1) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every pixel to the segment ``(y0, x0)``–``(y1, x1)`` and its position along it (0..1)."""
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx + 1e-6), 0, 1)
    return np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)), t


class Look:
    """Everything about a video's appearance that is random and says nothing about its phases."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        th, tw = 2 * height, 2 * width
        octaves = tuple(int(c) for c in rng.choice([4, 8, 16, 32], size=rng.integers(1, 4), replace=False))
        mix = smooth_noise(rng, th, tw, octaves)[..., None]
        veins = (np.sin(smooth_noise(rng, th, tw, (4, 8)) * rng.uniform(10, 40)) ** 8)[..., None]
        base, other, vein = random_color(rng), random_color(rng), random_color(rng)
        tissue = base * (1 - mix) + other * mix
        self.tissue = tissue * (1 - 0.5 * veins) + vein * 0.5 * veins
        self.metal, self.organ = contrasting_color(rng, float(self.tissue.mean())), random_color(rng)
        self.clip, self.spot = random_color(rng), random_color(rng)
        self.gain = rng.uniform(0.55, 1.15) * rng.uniform(0.75, 1.25, size=3)
        self.flicker = (rng.uniform(0, 0.15), rng.uniform(0.05, 0.3), rng.uniform(0, 2 * np.pi))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        r = np.hypot((yy - height / 2) / height, (xx - width / 2) / width)
        self.vignette = (1 - rng.uniform(0.2, 0.9) * np.clip(r / 0.7, 0, 1) ** 2)[..., None]
        self.noise = rng.uniform(0.005, 0.03)
        self.drift = (rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi))

    def light(self, img: np.ndarray, time: float, rng: np.random.Generator) -> np.ndarray:
        """Gain, white balance, flicker, vignette and noise: the frame as uint8."""
        amp, freq, phase = self.flicker
        gain = self.gain * (1 + amp * np.sin(2 * np.pi * freq * time + phase))
        img = img * gain * self.vignette + rng.normal(0, self.noise, img.shape)
        return (np.clip(img, 0, 1) * 255).astype(np.uint8)


class ProxyScene:
    """Renders the frames of one proxy video: tissue, organ, clips, spots and two instruments per phase."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.h, self.w, self.rng = height, width, rng
        self.look = Look(rng, height, width)
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.entry = rng.uniform(0, 2 * np.pi, size=2)  # each slot's shaft enters from its own side
        self.entry[1] = self.entry[0] + rng.uniform(0.6, 1.4) * np.pi  # the two shafts come from apart
        self.offsets = rng.uniform(0, 2 * np.pi, size=4)
        self.clip_spots = rng.uniform(0.3, 0.7, size=(NUM_CLIPS, 2))
        self.clip_angles = rng.uniform(0, np.pi, size=NUM_CLIPS)
        self.pulse_spots = rng.uniform(0.2, 0.8, size=(3, 2))

    def render(self, time: float, phase: int, progress: float) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 frame at ``time`` seconds, ``progress`` (0..1) into ``phase``."""
        spec = PROXY_SCRIPT[phase]
        h, w = self.h, self.w
        speed, phase0, phase1 = self.look.drift
        oy = int((0.5 + 0.4 * np.sin(speed * time + phase0)) * h)
        ox = int((0.5 + 0.4 * np.cos(0.8 * speed * time + phase1)) * w)
        img = self.look.tissue[oy:oy + h, ox:ox + w].copy()
        img = self._organ(img, spec["organ"], time, progress)
        img = self._clips(img, phase, progress)
        if spec["event"] == "pulses":
            img = self._pulses(img, time)
        for slot, tool in enumerate(spec["tools"]):
            img = self._tool(img, tool, spec["motion"], time, slot)
        return self.look.light(img, time, self.rng)

    def _paint(self, img: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> np.ndarray:
        a = np.clip(alpha, 0, 1)[..., None]
        return img * (1 - a) + a * color

    def _organ(self, img: np.ndarray, state: str, time: float, progress: float) -> np.ndarray:
        if state == "gone":
            return img
        cy, cx, scale = 0.45, 0.5, 1.0 + 0.03 * np.sin(1.5 * time)
        if state == "wobble":
            cy, cx = cy + 0.06 * np.sin(2.5 * time), cx + 0.06 * np.cos(1.9 * time)
        elif state == "shrink":
            scale = 1.0 - 0.7 * progress
        elif state == "exit":
            scale, cy = 0.3, 0.45 - 0.8 * progress
        ry, rx = 0.22 * self.h * scale, 0.25 * self.w * scale
        d = np.hypot((self.yy - cy * self.h) / ry, (self.xx - cx * self.w) / rx)
        return self._paint(img, (1.0 - d) * 6.0, self.look.organ)

    def _clips(self, img: np.ndarray, phase: int, progress: float) -> np.ndarray:
        if phase < 2:
            return img
        shown = NUM_CLIPS if phase > 2 else int(progress * (NUM_CLIPS + 1))
        for (sy, sx), ang in list(zip(self.clip_spots, self.clip_angles))[:shown]:
            along = (self.yy - sy * self.h) * np.sin(ang) + (self.xx - sx * self.w) * np.cos(ang)
            across = (self.yy - sy * self.h) * np.cos(ang) - (self.xx - sx * self.w) * np.sin(ang)
            bar = (np.abs(along) < 0.04 * self.w) & (np.abs(across) < 0.012 * self.w + 0.5)
            img = self._paint(img, bar.astype(np.float32), self.look.clip)
        return img

    def _pulses(self, img: np.ndarray, time: float) -> np.ndarray:
        for k, (sy, sx) in enumerate(self.pulse_spots):
            r = 0.05 * self.w * (1 + 0.6 * np.sin(3.0 * time + 2.1 * k))
            d = np.hypot(self.yy - sy * self.h, self.xx - sx * self.w) / max(r, 1.0)
            img = self._paint(img, (1.0 - d) * 4.0, self.look.spot)
        return img

    def _tool(self, img: np.ndarray, tool: str, motion: str, time: float, slot: int) -> np.ndarray:
        h, w = self.h, self.w
        speed, tremor, sweep = MOTIONS[motion]
        t = time * speed + self.offsets[slot]
        ang = self.entry[slot] + sweep * np.sin(0.5 * t)
        y0, x0 = h / 2 + 1.2 * h * np.sin(ang), w / 2 + 1.2 * w * np.cos(ang)
        reach = 0.1 + 0.35 * (1 + np.sin(t)) / 2
        y1 = h / 2 + (y0 - h / 2) * reach + tremor * h * np.sin(23.0 * time + slot)
        x1 = w / 2 + (x0 - w / 2) * reach + tremor * w * np.cos(29.0 * time + slot)
        length = np.hypot(y1 - y0, x1 - x0) + 1e-6
        u = np.array([(y1 - y0) / length, (x1 - x0) / length])
        dist, _ = segment_distance(self.yy, self.xx, y0, x0, y1, x1)
        width = 0.022 * w
        shade = 0.75 + 0.25 * np.cos(np.clip(dist / width, 0, 1) * np.pi / 2)[..., None]
        img = np.where((dist < width)[..., None], self.look.metal * shade, img)
        tip = tip_shape(self.yy, self.xx, tool, np.array([y1, x1]), u, w, time)
        return np.where(tip[..., None], self.look.metal * 0.85, img)


def tip_shape(yy: np.ndarray, xx: np.ndarray, tool: str, tip: np.ndarray, u: np.ndarray, w: int,
              time: float) -> np.ndarray:
    """Boolean mask of an instrument's tip at ``tip`` pointing along the unit vector ``u``."""
    n = np.array([-u[1], u[0]])
    size, thin = 0.09 * w, 0.012 * w + 0.5

    def line(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return segment_distance(yy, xx, a[0], a[1], b[0], b[1])[0] < thin

    if tool == "grasper":
        opening = 0.2 + 0.35 * (1 + np.sin(3.0 * time)) / 2
        jaws = [np.cos(opening) * u + s * np.sin(opening) * n for s in (1, -1)]
        return line(tip, tip + size * jaws[0]) | line(tip, tip + size * jaws[1])
    if tool == "hook":
        bend = tip + 0.5 * size * u
        return line(tip, bend) | line(bend, bend + 0.6 * size * n)
    if tool == "clipper":
        return line(tip + 0.3 * size * n, tip + 0.3 * size * n + size * u) | line(
            tip - 0.3 * size * n, tip - 0.3 * size * n + size * u
        )
    centre = tip + 0.7 * size * u
    d = np.hypot(yy - centre[0], xx - centre[1])
    if tool == "bag":
        return np.abs(d - 0.7 * size) < thin
    if tool == "irrigator":
        return d < 0.45 * size
    raise ValueError(f"unknown proxy instrument {tool!r}")


def phase_lengths(rng: np.random.Generator, total: int, phases: int) -> list[int]:
    """Random phase lengths (weights 0.6-1.4, at least 8 frames each) summing to ``total``."""
    weights = rng.uniform(0.6, 1.4, phases)
    lengths = np.maximum((weights / weights.sum() * total).astype(int), 8)
    lengths[1] += total - lengths.sum()
    return lengths.tolist()


def render_proxy_frames(seed: int, num_frames: int, size: tuple[int, int], fps: int):
    """Yield ``(frame (H, W, 3) uint8, phase)`` of the seeded proxy video (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    width, height = size
    scene = ProxyScene(rng, height, width)
    lengths = phase_lengths(rng, num_frames, len(PROXY_SCRIPT))
    phases = [p for p, n in enumerate(lengths) for _ in range(n)]
    starts = np.cumsum([0, *lengths[:-1]])
    for i, p in enumerate(phases):
        progress = (i - starts[p]) / max(1, lengths[p])
        yield scene.render(i / fps, p, progress), p


def write_proxy_video(path: Path, label_path: Path, seed: int, num_frames: int, size: tuple[int, int],
                      fps: int) -> list[int]:
    """Render one seeded proxy video to ``path`` (h264 mp4, GOP 12) and its Cholec80-format labels."""
    phases: list[int] = []

    def frames():
        for frame, phase in render_proxy_frames(seed, num_frames, size, fps):
            phases.append(phase)
            yield frame

    write_h264(path, frames(), fps, size)
    write_phase_file(label_path, phases)
    return phases
