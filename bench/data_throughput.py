"""Pre-training data throughput per CPU core: the reference loader vs our frame-folder and decord paths.

Writes synthetic surgical videos (the demo renderer) at 512×320 into a temporary folder as PNG frames, JPEG
frames and mp4 files, then times 16-frame training clips at 224² on one core (``torch.set_num_threads(1)``, no
DataLoader workers), each path in a fresh process so that its peak RSS is its own. The per-core rate is clips
per CPU-second of that process (``time.process_time``), so a busy machine does not distort it; the wall rate
is printed too:

(a) ``reference``: a re-implementation of the reference loader from the spec (pretrain §6.2-§6.4): 16
    ``PIL.Image.open`` of PNG frames, the multi-scale fixed-corner crop, PIL bilinear resize done twice (the
    student copy and the teacher copy), ``Stack`` + ``ToTorchFormatTensor`` + per-channel ``GroupNormalize`` for
    both copies, and the tube mask drawn in numpy;
(b) ``frames``: our ``VideoClipDataset`` on JPEG frame folders (``python -m surgvista.data.prepare`` output);
(c) ``decord``: our ``VideoClipDataset`` on mp4 files with one keyframe per frame (x264 ``-g 1 -tune
    fastdecode``: decord seeks to each needed frame and decodes only those, each once); ``decord-gop12`` shows a
    12-frame GOP with default tuning (decoding runs from the keyframe before the first needed frame through the
    anchor); ``decord-K4`` is ``decord`` with ``num_clips_per_video=4`` (4 crops per decoded anchor, counted as
    4 clips);
(b)/(c) produce uint8 clips, normalised after the transfer to the GPU (``data.normalize_on_device=true``, the
default of ``data=pretrain_mix``); ``frames+norm`` adds the CPU normalisation for comparison.

``python bench/data_throughput.py`` (about 2-3 minutes on one core) or ``make bench-data``; ``--tiny`` for a
smoke run. Clips/s figures are per core; a loader with W workers scales roughly W×.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PATHS = ("reference", "frames", "frames+norm", "decord", "decord-gop12", "decord-K4")
# mp4 encodings (libx264, crf 23, 1 fps): one keyframe per frame tuned for decoding speed (what random access
# into 1-fps pre-training videos wants), and a 12-frame GOP with default tuning for comparison.
ENCODINGS = {"intra": (1, {"crf": "23", "tune": "fastdecode"}), "gop12": (12, {"crf": "23"})}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------ synthetic data
def make_data(root: Path, num_videos: int, num_frames: int, size: tuple[int, int], seed: int = 0) -> dict:
    """PNG folders, JPEG folders (quality 90) and mp4s (all-intra and GOP 12) of the same rendered frames."""
    import av
    from PIL import Image

    from surgvista.data.demo import PHASE_SCRIPT, _Scene
    from surgvista.data.manifest import VideoEntry, write_manifest

    width, height = size
    png, jpg, intra, gop = [], [], [], []
    for v in range(num_videos):
        rng = np.random.default_rng(seed + v)
        scene = _Scene(rng, height, width)
        vid = f"video{v:02d}"
        folders = {k: root / k / vid for k in ("png", "jpg")}
        for f in folders.values():
            f.mkdir(parents=True, exist_ok=True)
        containers = {}
        for name, (g, options) in ENCODINGS.items():
            (root / name).mkdir(exist_ok=True)
            c = av.open(str(root / name / f"{vid}.mp4"), "w")
            s = c.add_stream("libx264", rate=1, options=options)
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            s.codec_context.gop_size = g
            containers[name] = (c, s)
        for i in range(num_frames):
            phase = min(len(PHASE_SCRIPT) - 1, i * len(PHASE_SCRIPT) // num_frames)
            # 1 frame per second of surgery: consecutive frames differ like 1-fps extracted frames do.
            frame = scene.render(float(i), phase, (i % 50) / 50)
            img = Image.fromarray(frame)
            img.save(folders["png"] / f"{i:05d}.png")
            img.save(folders["jpg"] / f"{i}.jpg", quality=90)
            for c, s in containers.values():
                c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        for c, s in containers.values():
            c.mux(s.encode())
            c.close()
        png.append(folders["png"])
        jpg.append(VideoEntry("bench", vid, "frames", folders["jpg"], num_frames, 1.0))
        intra.append(VideoEntry("bench", vid, "video", root / "intra" / f"{vid}.mp4", num_frames, None))
        gop.append(VideoEntry("bench", vid, "video", root / "gop12" / f"{vid}.mp4", num_frames, None))
    return {
        "png": [str(p) for p in png],
        "jpg": str(write_manifest(root / "jpg.jsonl", jpg)),
        "intra": str(write_manifest(root / "intra.jsonl", intra)),
        "gop12": str(write_manifest(root / "gop12.jsonl", gop)),
    }


# ------------------------------------------------------------------------------ (a) the reference loader
class ReferenceLoader:
    """The reference's per-sample work (spec pretrain §6.2-§6.4), written from the spec."""

    def __init__(
        self,
        folders: list[str],
        num_frames: int,
        input_size: int,
        rate: int = 4,
        mask_ratio: float = 0.85,
        patch: int = 16,
        tubelet: int = 2,
    ) -> None:
        self.samples = []  # flat index: (folder, frame_id), frames of a video contiguous
        for folder in folders:
            n = len(list(Path(folder).glob("*.png")))
            self.samples += [(folder, f) for f in range(n)]
        self.num_frames, self.size, self.rate = num_frames, input_size, rate
        self.scales, self.max_distort = (1, 0.875, 0.75, 0.66), 1
        self.fix_offsets = (
            (0, 0),
            (4, 0),
            (0, 4),
            (4, 4),
            (2, 2),
            (0, 2),
            (4, 2),
            (2, 4),
            (2, 0),
            (1, 1),
            (3, 1),
            (1, 3),
            (3, 3),
        )
        self.num_patches = (input_size // patch) ** 2
        self.num_mask = int(mask_ratio * self.num_patches)
        self.mask_frames = num_frames // tubelet

    def __len__(self) -> int:
        return len(self.samples)

    def _clip_paths(self, index: int) -> list[str]:
        folder, f = self.samples[index]
        base = index - f
        ids, cur = [], f
        for _ in range(self.num_frames):
            ids.append(cur)
            if cur - self.rate >= 0:
                cur -= self.rate
        return [f"{self.samples[base + i][0]}/{self.samples[base + i][1]:05d}.png" for i in sorted(ids)]

    def _crop(self, img_w: int, img_h: int) -> tuple[int, int, int, int]:
        base = min(img_w, img_h)
        sizes = [int(base * s) for s in self.scales]
        sizes = [self.size if abs(s - self.size) < 3 else s for s in sizes]
        pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= self.max_distort]
        cw, ch = random.choice(pairs)
        w_step, h_step = (img_w - cw) // 4, (img_h - ch) // 4
        i, j = random.choice(self.fix_offsets)
        return i * w_step, j * h_step, cw, ch

    def _to_tensor(self, group):
        import torch

        stacked = np.concatenate([np.asarray(img) for img in group], axis=2)  # Stack(roll=False): (H, W, 3T)
        t = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)  # ToTorchFormatTensor
        for c, m, s in zip(t, MEAN * self.num_frames, STD * self.num_frames, strict=True):  # GroupNormalize
            c.sub_(m).div_(s)
        return t.view(self.num_frames, 3, self.size, self.size).transpose(0, 1)

    def __getitem__(self, index: int):
        from PIL import Image

        images = [Image.open(p) for p in self._clip_paths(index)]
        x, y, cw, ch = self._crop(*images[0].size)
        cropped = [img.crop((x, y, x + cw, y + ch)) for img in images]
        student = [img.resize((self.size, self.size), Image.BILINEAR) for img in cropped]
        teacher = [img.resize((self.size, self.size), Image.BILINEAR) for img in cropped]
        mask = np.hstack([np.zeros(self.num_patches - self.num_mask), np.ones(self.num_mask)])
        np.random.shuffle(mask)
        mask = np.tile(mask, (self.mask_frames, 1)).flatten()
        return self._to_tensor(student), self._to_tensor(teacher), mask


# --------------------------------------------------------------------------------------------- timing
def build(path: str, data: dict, num_frames: int, input_size: int):
    if path == "reference":
        return ReferenceLoader(data["png"], num_frames, input_size)
    from surgvista.data.clips import VideoClipDataset
    from surgvista.data.transforms import MultiScaleCrop

    manifest = {
        "frames": "jpg",
        "frames+norm": "jpg",
        "decord": "intra",
        "decord-gop12": "gop12",
        "decord-K4": "intra",
    }[path]
    transform = MultiScaleCrop(input_size, normalize=path == "frames+norm")
    return VideoClipDataset(
        [data[manifest]], transform, num_frames, 4, backend="decord", num_clips=4 if path.endswith("K4") else 1
    )


def run_path(path: str, data: dict, anchors: list[int], num_frames: int, input_size: int, queue=None) -> dict:
    """Time ``len(anchors)`` clips of ``path`` on one thread; clips/s and this process's peak RSS."""
    import torch

    torch.set_num_threads(1)
    random.seed(0)
    np.random.seed(0)
    ds = build(path, data, num_frames, input_size)
    ds[anchors[0]]  # warm-up: imports, first decoder open
    wall, cpu = time.perf_counter(), time.process_time()
    for a in anchors[1:]:
        ds[a]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    clips = (len(anchors) - 1) * (4 if path.endswith("K4") else 1)
    out = {
        "path": path,
        "clips_per_s": clips / cpu,
        "clips_per_wall_s": clips / wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if queue is not None:
        queue.put(out)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=3)
    p.add_argument("--frames", type=int, default=100, help="frames per video (1 fps)")
    p.add_argument("--clips", type=int, default=80, help="timed clips per path (loader samples)")
    p.add_argument("--size", type=int, nargs=2, default=(512, 320), metavar=("W", "H"))
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--tiny", action="store_true", help="smoke run: 2 small videos, a few clips, in-process")
    p.add_argument("--out", type=Path, default=None, help="data folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    if args.tiny:
        args.videos, args.frames, args.clips, args.size, args.input_size = 2, 20, 3, (96, 64), 32

    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        data = make_data(root, args.videos, args.frames, tuple(args.size))
        print(
            f"synthetic data: {args.videos} videos x {args.frames} frames at {args.size[0]}x{args.size[1]} "
            f"({time.perf_counter() - t0:.0f} s); {args.num_frames}-frame clips at {args.input_size}², stride 4, "
            f"{args.clips} clips per path, 1 thread",
            flush=True,
        )
        rng = random.Random(0)
        anchors = [rng.randrange(args.videos * args.frames) for _ in range(args.clips + 1)]
        results = []
        for path in args.paths:
            if args.tiny:
                res = run_path(path, data, anchors, args.num_frames, args.input_size)
            else:  # a fresh process per path: its own peak RSS, no shared caches
                ctx = mp.get_context("spawn")
                queue = ctx.Queue()
                proc = ctx.Process(target=run_path, args=(path, data, anchors, args.num_frames, args.input_size, queue))
                proc.start()
                res = queue.get()
                proc.join()
            results.append(res)
            print(
                f"  {path:<13} {res['clips_per_s']:8.1f} clips/s per core (CPU time; wall "
                f"{res['clips_per_wall_s']:.1f}/s)   peak RSS {res['peak_rss_mb']:5.0f} MB",
                flush=True,
            )
    ref = next((r for r in results if r["path"] == "reference"), None)
    if ref:
        print(
            "ratio to reference (a): "
            + ", ".join(f"{r['path']} {r['clips_per_s'] / ref['clips_per_s']:.2f}x" for r in results if r is not ref)
        )
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
