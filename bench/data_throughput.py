"""Pre-training data throughput per CPU core: the reference loader vs our frame-folder and mp4 paths.

Writes synthetic surgical videos (the demo renderer, 1 frame per second of surgery) at 512×320 into a temporary
folder as PNG frames, JPEG frames and mp4 files, then times 16-frame training clips (stride 4) at 224² on one
thread (``torch.set_num_threads(1)``, no DataLoader workers, one decoding thread). The per-core rate is clips
per CPU-second (``time.process_time``), timed in interleaved rounds in one process so that the load of a busy
machine hits every path alike; the wall rate is printed too. Peak RSS is measured in a fresh process per path.

(a) ``reference``: a re-implementation of the reference loader: 16
    ``PIL.Image.open`` of PNG frames, the multi-scale fixed-corner crop, PIL bilinear resize done twice (the
    student copy and the teacher copy), ``Stack`` + ``ToTorchFormatTensor`` + per-channel ``GroupNormalize`` for
    both copies, and the tube mask drawn in numpy;
(b) ``frames``: our ``VideoClipDataset`` on JPEG (q90) frame folders, as ``surgvista.data.prepare`` writes them;
(c) ``decord`` / ``pyav``: our ``VideoClipDataset`` on mp4 files with one keyframe per frame (x264 ``-g 1 -tune
    fastdecode``), each distinct frame decoded once in one sorted batch: decord seeks to each needed frame;
    ``PyAVReader`` seeks, decodes one packet and converts only the needed frames. ``*-gop12`` use a 12-frame GOP
    with default tuning (decoding runs from the keyframe before a needed frame). ``pyav-K4`` is ``pyav`` with
    ``num_clips_per_video=4`` (4 crops per decoded anchor, counted as 4 clips). ``torchcodec`` /
    ``torchcodec-gop12``: our ``TorchCodecReader`` on the same files (CPU, one FFmpeg thread; skipped with the reason
    when torchcodec cannot load); ``torchcodec-cuda`` (only where CUDA is present): NVDEC decoding, frames copied
    back to the host for the crop (its wall rate is the per-GPU figure);
(d) ``shards``: litdata clip shards (``python -m surgvista.shards``) written from the JPEG frame folders of (b)
    (same JPEG bytes), read by ``streaming_clip_dataset`` from a local folder, item by item in random order.
Our paths produce uint8 clips, normalised after the transfer to the GPU (``data.normalize_on_device=true``, the
default of ``data=pretrain_mix``); ``frames+norm`` adds the CPU normalisation for comparison.

``python bench/data_throughput.py`` (a few minutes) or ``make bench-data``; ``--tiny`` for a smoke run.
Rates are per core: a loader with W workers on W free cores scales roughly W×.
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

PATHS = ("reference", "frames", "frames+norm", "decord", "pyav", "decord-gop12", "pyav-gop12", "pyav-K4",
         "torchcodec", "torchcodec-gop12", "shards", "torchcodec-cuda")
# Extra ratios printed from the same run: (path, baseline).
PAIRS = (("torchcodec", "pyav"), ("torchcodec", "decord"), ("torchcodec-gop12", "pyav-gop12"), ("shards", "frames"),
         ("torchcodec-cuda", "torchcodec"))
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
    """The reference's per-sample work."""

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
# path → (manifest, backend, clips per visit, normalise on CPU)
OURS = {
    "frames": ("jpg", "decord", 1, False),
    "frames+norm": ("jpg", "decord", 1, True),
    "decord": ("intra", "decord", 1, False),
    "pyav": ("intra", "pyav", 1, False),
    "decord-gop12": ("gop12", "decord", 1, False),
    "pyav-gop12": ("gop12", "pyav", 1, False),
    "pyav-K4": ("intra", "pyav", 4, False),
    "torchcodec": ("intra", "torchcodec", 1, False),
    "torchcodec-gop12": ("gop12", "torchcodec", 1, False),
    "torchcodec-cuda": ("intra", "torchcodec-cuda", 1, False),
}


def build(path: str, data: dict, num_frames: int, input_size: int):
    if path == "reference":
        return ReferenceLoader(data["png"], num_frames, input_size)
    from surgvista.data.clips import VideoClipDataset
    from surgvista.data.transforms import MultiScaleCrop

    if path == "shards":
        from surgvista.data.stream import streaming_clip_dataset

        return streaming_clip_dataset(data["shards"], MultiScaleCrop(input_size, normalize=False), num_frames, 4)

    manifest, backend, k, norm = OURS[path]
    transform = MultiScaleCrop(input_size, normalize=norm)
    return VideoClipDataset([data[manifest]], transform, num_frames, 4, backend=backend, num_clips=k)


def clips_per_item(path: str) -> int:
    return OURS[path][2] if path in OURS else 1


def available(paths: list[str]) -> list[str]:
    """``paths`` less those this machine cannot run (said once, with the reason)."""
    import torch

    from surgvista.data.readers import torchcodec_problem

    problem = torchcodec_problem()
    keep = []
    for p in paths:
        if p.startswith("torchcodec") and problem:
            print(f"  {p:<16} skipped: {problem}")
        elif p == "torchcodec-cuda" and not torch.cuda.is_available():
            print(f"  {p:<16} skipped: CUDA is absent")
        else:
            keep.append(p)
    return keep


def write_bench_shards(root: Path, data: dict, num_frames: int) -> str:
    """litdata shards of the JPEG frame-folder manifest (frames stored byte for byte)."""
    from surgvista.data.shards import write_shards

    out = root / "shards"
    write_shards([data["jpg"]], str(out), num_frames=num_frames, sampling_rate=4, overwrite=True)
    return str(out)


def time_paths(
    paths: list[str], data: dict, anchors: list[int], num_frames: int, input_size: int, rounds: int, queue=None
) -> dict:
    """Clips per CPU-second and per wall-second of each path, timed in interleaved rounds on one thread (so a
    change in machine load hits every path alike)."""
    import torch

    torch.set_num_threads(1)
    random.seed(0)
    np.random.seed(0)
    loaders = {p: build(p, data, num_frames, input_size) for p in paths}
    for ds in loaders.values():
        ds[anchors[0]]  # warm-up: imports, first decoder open
    cpu = dict.fromkeys(paths, 0.0)
    wall = dict.fromkeys(paths, 0.0)
    chunks = np.array_split(np.asarray(anchors[1:]), rounds)
    for chunk in chunks:
        for p, ds in loaders.items():
            w, c = time.perf_counter(), time.process_time()
            for a in chunk:
                ds[int(a)]
            cpu[p] += time.process_time() - c
            wall[p] += time.perf_counter() - w
    n = len(anchors) - 1
    out = {
        p: {"clips_per_s": n * clips_per_item(p) / cpu[p], "clips_per_wall_s": n * clips_per_item(p) / wall[p]}
        for p in paths
    }
    if queue is not None:
        queue.put(out)
    return out


def peak_rss(path: str, data: dict, anchors: list[int], num_frames: int, input_size: int, queue=None) -> float:
    """Peak RSS (MB) of a process that loads clips of ``path`` only."""
    import torch

    torch.set_num_threads(1)
    ds = build(path, data, num_frames, input_size)
    for a in anchors:
        ds[a]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if queue is not None:
        queue.put(rss)
    return rss


def in_child(fn, *args):
    """Run ``fn(*args, queue)`` in a fresh (spawned) process and return what it puts on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def rate(result: dict, path: str) -> float:
    """Clips per CPU-second, or per wall-second for NVDEC (``path`` ending in ``-cuda``): the GPU does the work."""
    return result["clips_per_wall_s" if path.endswith("-cuda") else "clips_per_s"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=3)
    p.add_argument("--frames", type=int, default=80, help="frames per video (1 fps)")
    p.add_argument("--clips", type=int, default=60, help="timed loader samples per path")
    p.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds")
    p.add_argument("--size", type=int, nargs=2, default=(512, 320), metavar=("W", "H"))
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS, help="unavailable ones are skipped")
    p.add_argument("--no-rss", action="store_true", help="skip the per-path peak-RSS processes")
    p.add_argument("--tiny", action="store_true", help="smoke run: 2 small videos, a few clips, in-process")
    p.add_argument("--out", type=Path, default=None, help="data folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    if args.tiny:
        args.videos, args.frames, args.clips, args.rounds = 2, 20, 4, 2
        args.size, args.input_size, args.no_rss = (96, 64), 32, True

    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        data = make_data(root, args.videos, args.frames, tuple(args.size))
        print(
            f"synthetic data: {args.videos} videos x {args.frames} frames at {args.size[0]}x{args.size[1]} "
            f"({time.perf_counter() - t0:.0f} s); {args.num_frames}-frame clips at {args.input_size}², stride 4; "
            f"{args.clips} loader samples per path in {args.rounds} interleaved rounds, 1 thread",
            flush=True,
        )
        args.paths = available(args.paths)
        if "shards" in args.paths:
            t0 = time.perf_counter()
            data["shards"] = write_bench_shards(root, data, args.num_frames)
            print(f"litdata shards written ({time.perf_counter() - t0:.0f} s)", flush=True)
        rng = random.Random(0)
        anchors = [rng.randrange(args.videos * args.frames) for _ in range(args.clips + 1)]
        timing = (args.paths, data, anchors, args.num_frames, args.input_size, args.rounds)
        results = time_paths(*timing) if args.tiny else in_child(time_paths, *timing)
        for path in args.paths:
            res = results[path]
            if not args.no_rss:
                res["peak_rss_mb"] = in_child(peak_rss, path, data, anchors[:10], args.num_frames, args.input_size)
            rss = f"   peak RSS {res['peak_rss_mb']:5.0f} MB" if "peak_rss_mb" in res else ""
            print(
                f"  {path:<16} {res['clips_per_s']:8.1f} clips/s per core (CPU time; wall "
                f"{res['clips_per_wall_s']:.1f}/s){rss}",
                flush=True,
            )
    if "reference" in results:
        ref = results["reference"]["clips_per_s"]
        print(
            "ratio to reference (a): "
            + ", ".join(f"{p} {r['clips_per_s'] / ref:.2f}x" for p, r in results.items() if p != "reference")
        )
    pairs = [(p, b) for p, b in PAIRS if p in results and b in results]
    if pairs:
        print("ratios (per core; torchcodec-cuda: wall): " + ", ".join(
            f"{p}/{b} {rate(results[p], p) / rate(results[b], p):.2f}x" for p, b in pairs))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
