"""Tiny fixtures of every supported dataset, written in the owners' official layouts (docs/datasets.md).

Videos are 32x24 h264 mp4s whose frame ``k`` is a flat colour with red = ``(8 k) mod 256``, so a test can tell
which native frame an extracted JPEG shows (:func:`frame_number`, modulo 32).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from surgvista.data.adapters.cataract import CATARACT21_PHASES
from surgvista.data.adapters.cholec import M2CAI16_PHASES
from surgvista.data.annotations import CHOLEC80_PHASES


def write_video(path: Path, frames: int, fps: float | Fraction = 25, size=(32, 24)) -> Path:
    """A tiny h264 mp4 whose frame ``k`` has red = 8 k mod 256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.options = {"preset": "ultrafast", "qp": "0"}
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[..., 2] = 128
        for k in range(frames):
            img[..., 0] = (8 * k) % 256
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_image(path: Path, k: int, mode: str = "RGB", size=(32, 24)) -> Path:
    """An image whose red channel is 8 k mod 256 (``mode`` L or RGBA to test the conversions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0], arr[..., 2] = (8 * k) % 256, 128
    img = Image.fromarray(arr)
    if mode == "L":
        img = Image.fromarray(np.full((size[1], size[0]), (8 * k) % 256, np.uint8), "L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    img.save(path)
    return path


def frame_number(path: Path) -> int:
    """Native frame number (mod 32) shown by an extracted frame."""
    with Image.open(path) as img:
        red = float(np.asarray(img.convert("RGB"))[..., 0].mean())
    return round(red / 8) % 32


def _phase_txt(path: Path, phases: list[int], names) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("Frame\tPhase\n" + "".join(f"{i}\t{names[p]}\n" for i, p in enumerate(phases)))


def cholec_phases(n: int, clip_at: int | None = None) -> list[int]:
    """Phase ``min(k // 15, 6)`` per frame (or 1 before ``clip_at`` and 2 after it)."""
    if clip_at is not None:
        return [1 if k < clip_at else 2 for k in range(n)]
    return [min(k // 15, 6) for k in range(n)]


def cholec80(root: Path, numbers=(1, 2, 41, 45, 50), frames: int = 100) -> Path:
    """``videos/videoNN.mp4`` (25 fps, 4 s) + ``phase_annotations/videoNN-phase.txt`` + tool files."""
    for n in numbers:
        write_video(root / "videos" / f"video{n:02d}.mp4", frames)
        _phase_txt(root / "phase_annotations" / f"video{n:02d}-phase.txt", cholec_phases(frames), CHOLEC80_PHASES)
        tools = "Frame\tGrasper\tBipolar\tHook\tScissors\tClipper\tIrrigator\tSpecimenBag\n"
        tools += "".join(f"{k}\t1\t0\t0\t0\t0\t0\t0\n" for k in range(0, frames, 25))
        (root / "tool_annotations").mkdir(exist_ok=True)
        (root / "tool_annotations" / f"video{n:02d}-tool.txt").write_text(tools)
    return root


def m2cai16(root: Path) -> Path:
    for folder, stem in (
        ("train_dataset", "workflow_video_01"),
        ("train_dataset", "workflow_video_02"),
        ("test_dataset", "test_workflow_video_01"),
    ):
        write_video(root / folder / f"{stem}.mp4", 75)
        phases = [min(k // 10, 7) for k in range(75)]
        _phase_txt(root / folder / f"{stem}.txt", phases, M2CAI16_PHASES)
        (root / folder / f"{stem}_timestamp.txt").write_text("Frame\tPhase\n00:00:00:00\tTrocarPlacement\n")
    return root


def heichole(root: Path) -> Path:
    """Video 1 at 25 fps (lower-case annotation name), video 16 at 50 fps, an HD copy, test video 30 unlabelled."""
    full = root / "Videos" / "Full"
    write_video(full / "Hei-Chole1.mp4", 100, 25)
    write_video(full / "HD" / "Hei-Chole1.mp4", 100, 25)
    write_video(full / "Hei-Chole16.mp4", 200, 50)
    write_video(full / "Hei-Chole30.mp4", 50, 25)
    phase = root / "Annotations" / "Phase"
    phase.mkdir(parents=True)
    (phase / "hei-chole1_annotation_phase.csv").write_text("".join(f"{k},{k // 30}\n" for k in range(100)))
    (phase / "Hei-Chole16_Annotation_Phase.csv").write_text("".join(f"{k},{k // 60}\n" for k in range(200)))
    return root


def pitvis(root: Path) -> Path:
    """Flat ``video_NN.mp4`` (24 fps, 4 s) + ``annotations_NN.csv`` (ceil(n/24)+1 rows); video 02 unlabelled."""
    write_video(root / "video_01.mp4", 96, 24)
    write_video(root / "video_02.mp4", 48, 24)
    steps = [-1, -1, 1, 3, 3]
    (root / "annotations_01.csv").write_text(
        "int_video,int_time,int_step,int_instrument1,int_instrument2\n"
        + "".join(f"1,{t},{s},-1,-2\n" for t, s in enumerate(steps))
    )
    (root / "map_steps.csv").write_text("int,step\n-1,operation_not_started\n")
    return root


def psiava(root: Path) -> Path:
    for case, n in (("CASE001", 5), ("CASE002", 3)):
        for k in range(n):
            write_image(root / "keyframes" / case / f"{k:05d}.jpg", k)
    return root


def autolaparo(root: Path) -> Path:
    """``Task 1 Surgical workflow recognition/videos/NN.mp4`` + ``labels/label_NN.txt`` (1-based seconds)."""
    task = root / "Task 1 Surgical workflow recognition"
    for n in (1, 11, 15):
        write_video(task / "videos" / f"{n:02d}.mp4", 100)
        (task / "labels").mkdir(parents=True, exist_ok=True)
        (task / "labels" / f"label_{n:02d}.txt").write_text(
            "Frame\tPhase\n" + "".join(f"{s}\t{min(s, 7)}\n" for s in range(1, 5))
        )
    return root


def bypass(root: Path, prefix: str = "BBP") -> Path:
    """``<Bern|Stras>Bypass70/videos/XBP01.mp4`` + the GitHub labels ``labels/<site>/labels_by70/XBP01.mp4.json``."""
    folder, site = ("BernBypass70", "bern") if prefix == "BBP" else ("StrasBypass70", "strasbourg")
    write_video(root / folder / "videos" / f"{prefix}01.mp4", 100)
    write_video(root / folder / "videos" / f"{prefix}02.mp4", 50)
    labels = {
        "phases": [
            {"start": 0, "end": 2500, "label_name": "preparation", "label_id": 0},
            {"start": 1000, "end": 2000, "label_name": "out_of_body", "label_id": 12},
            {"start": 2500, "end": 4000, "label_name": "gastric_pouch_creation", "label_id": 1},
        ],
        "steps": [{"start": 0, "end": 4000, "label_name": "s0_null_step", "label_id": 0}],
    }
    path = root / "labels" / site / "labels_by70" / f"{prefix}01.mp4.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(labels))
    return root


def gensurgery(root: Path) -> Path:
    """yt-dlp names: two long videos (61 s at 2 fps, one .mkv), one 10-s video, a subtitle sidecar, a .part."""
    videos = root / "videos"
    write_video(videos / "tlkluS81Vh4.Lap chole. Part 1.mp4", 122, 2)
    write_video(videos / "abc-DEF_123.Ωmega.mkv", 122, 2)
    write_video(videos / "short01.A short clip.mp4", 20, 2)
    (videos / "tlkluS81Vh4.Lap chole. Part 1.en.vtt").write_text("WEBVTT\n")
    (videos / "partial.Title.mp4.part").write_bytes(b"\0" * 100)
    return root


def cataracts(root: Path) -> Path:
    """``videos/micro/*.mp4`` at 29.97 fps + ``ground_truth/CATARACTS_2020/{train,dev,test}_gt/*.csv`` (1-based)."""
    rate = Fraction(30000, 1001)
    for name, gt, n in (("train01", "train_gt", 600), ("test01", "dev_gt", 90), ("test02", "test_gt", 90)):
        write_video(root / "videos" / "micro" / f"{name}.mp4", n, rate)
        path = root / "ground_truth" / "CATARACTS_2020" / gt / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("Frame,Steps\n" + "".join(f"{k + 1},{(k // 100) % 19}\n" for k in range(n)))
    return root


def cataract21(root: Path) -> Path:
    names = list(CATARACT21_PHASES[:10]) + ["Tonisieren", "Antibiotikum"]
    for folder, case in (("training", "case_01"), ("training", "case_02"), ("validation", "case_18")):
        write_video(root / folder / f"{case}.mp4", 75)
        rows = "".join(f"{k},{names[min(k // 6, 11)]}\n" for k in range(75))
        (root / folder / f"{case}.csv").write_text(rows)
    return root


def cataract101(root: Path) -> Path:
    """``videos/case_<id>.mp4`` + ``annotations.csv`` of phase start frames (`;`), phases.csv, videos.csv."""
    for vid in (269, 270, 271):
        write_video(root / "videos" / f"case_{vid}.mp4", 150)
    rows = [
        "VideoID;FrameNo;Phase",
        "269;30;1",
        "269;60;2",
        "269;100;3",
        "269;120;3",  # repeated last = end
        "270;0;1",
        "270;90;4",
        "271;10;1",
    ]
    (root / "annotations.csv").write_text("\n".join(rows) + "\n")
    (root / "phases.csv").write_text("Phase;Meaning\n1;Incision\n")
    (root / "videos.csv").write_text("VideoID;Frames;FPS;Surgeon;Experience\n269;150;25;4;1\n")
    return root


def esd57(root: Path, videos: int = 5) -> Path:
    for v in range(1, videos + 1):
        for k in range(4):
            write_image(root / "frames" / str(v) / f"{k:05d}.png", k)
        (root / "phases").mkdir(exist_ok=True)
        (root / "phases" / f"{v}.txt").write_text("Frame Phase\n" + "".join(f"{k} {(k + v) % 8}\n" for k in range(4)))
    return root


def pmlr50(root: Path) -> Path:
    for v in (1, 34, 38):
        for k in range(3):
            write_image(root / "frames" / f"{v:02d}" / f"{k:08d}.jpg", k)
        (root / "phase_annotations").mkdir(exist_ok=True)
        (root / "phase_annotations" / f"{v:02d}.txt").write_text(
            "frame phase\n" + "".join(f"{k} {min(k + v % 3, 4)}\n" for k in range(3))
        )
    return root


def cholect50_json(vid: int, n: int) -> dict:
    from surgvista.data.vocab import CHOLECT50_TRIPLETS

    triplet = {str(i): name for i, name in enumerate(CHOLECT50_TRIPLETS)}
    ann = {}
    for k in range(n):
        if k == 0:  # no action: an instance with triplet -1
            ann[str(k)] = [[-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0]]
        elif k == 2:  # two triplets, listed unsorted
            ann[str(k)] = [[17] + [-1] * 13 + [1], [3] + [-1] * 13 + [1]]
        elif k != 3:  # frame 3 not annotated
            ann[str(k)] = [[k] + [-1] * 13 + [2]]
    return {
        "video": vid,
        "fps": 1,
        "num_frames": n,
        "annotations": ann,
        "categories": {"triplet": triplet, "phase": {str(i): f"p{i}" for i in range(7)}},
    }


def cholect50(root: Path, vids=(1, 5, 6, 92)) -> Path:
    """``videos/VIDxx/000000.png`` (one RGBA, one greyscale frame) + ``labels/VIDxx.json``; 12 frames per video."""
    for v in vids:
        for k in range(12):
            mode = "RGBA" if k == 4 else "L" if k == 5 else "RGB"
            write_image(root / "videos" / f"VID{v:02d}" / f"{k:06d}.png", k, mode)
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"VID{v:02d}.json").write_text(json.dumps(cholect50_json(v, 12)))
    (root / "label_mapping.txt").write_text("# IVT, I, V, T, IV, IT\n0,0,2,0,2,0\n")
    return root


def prostate21(root: Path) -> Path:
    """``frames/<split>/<video>/<n>.jpg`` with gaps + ``annos/<split>/<video>.json`` (labelme ids 1..89)."""
    for split, video, numbers in (
        ("train", "PWH01", (0, 2, 5, 11)),
        ("val", "ESAD02", (0, 1)),
        ("test", "CASE003", (3, 4)),
    ):
        for k in numbers:
            write_image(root / "frames" / split / video / f"{k}.jpg", k)
        ann = {str(k): [[89 if k == 5 else 1 + k, 1, 2, 3, -1, -1, -1, -1, -1, -1]] for k in numbers if k != 2}
        path = root / "annos" / split / f"{video}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"annotations": ann}))
    return root


def cholec80_cvs(root: Path) -> Path:
    """Cholec80 videos 1 (val), 3 (train), 5 (test) + ``surgeons_annotations.xlsx``; clipping starts at frame 60."""
    import openpyxl

    for n in (1, 3, 5):
        write_video(root / "videos" / f"video{n:02d}.mp4", 100)
        _phase_txt(root / "phase_annotations" / f"video{n:02d}-phase.txt", cholec_phases(100, 60), CHOLEC80_PHASES)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(
        [
            "video",
            "critical_view",
            "initial_minute",
            "initial_second",
            "final_minute",
            "final_second",
            "two_structures",
            "cystic_plate",
            "hepatocystic_triangle",
            "total",
        ]
    )
    sheet.append([1, 0, 0, 1, 0, 3, 1, 2, 0, 3])  # 1..3 s, cut at the clipping frame 60 (2.4 s): 2 frames
    sheet.append([3, 1, 0, 0, 0, 2, 2, 2, 1, 5])
    sheet.append([3, 0, 0, 3, 0, 1, 0, 0, 0, 0])  # final < initial: skipped
    sheet.append([5, 0, 0, 0, 0, 1, 0, 1, 0, 1])
    book.save(root / "surgeons_annotations.xlsx")
    return root


def endoscapes(root: Path) -> Path:
    """``{train,val,test}/<vid>_<frame>.jpg`` (frames 0, 25, …, 1000: string order differs) + the official COCO
    files: ``annotation_ds_coco.json`` (CVS keyframes every 5 s), ``annotation_coco_vid.json`` (every frame, the
    last keyframe's label repeated) and ``annotation_coco.json`` (the bounding-box subset every 30 s, no CVS)."""
    root = root / "endoscapes"
    vids = {"train": (1,), "val": (121,), "test": (162,)}
    for split, vs in vids.items():
        keyframes, every, boxes = [], [], []
        for v in vs:
            ds = None
            for k in range(0, 41):
                name = f"{v}_{25 * k}.jpg"
                write_image(root / split / name, k, size=(16, 12))
                image = {"id": len(every), "file_name": name, "is_ds_keyframe": k % 5 == 0}
                if k % 5 == 0:
                    ds = [0.67, 0.33, 1.0] if k == 40 else [0.0, 0.33, 0.0]
                    keyframes.append({**image, "ds": ds})
                every.append({**image, "ds": ds})
                if k % 30 == 0:
                    boxes.append({**image, "is_det_keyframe": True})
        for name, images in (
            ("annotation_ds_coco.json", keyframes),
            ("annotation_coco_vid.json", every),
            ("annotation_coco.json", boxes),
        ):
            (root / split / name).write_text(json.dumps({"images": images, "annotations": []}))
        (root / f"{split}_vids.txt").write_text("".join(f"{float(v):.18e}\n" for v in vs))
    return root.parent


def surgicalactions160(root: Path) -> Path:
    base = root / "SurgicalActions160"
    for cls, name in ((1, "abdominal_access"), (2, "injection"), (16, "endobag-out")):
        for clip in (1, 2, 3):
            write_video(base / f"{cls:02d}_{name}" / f"{cls:02d}_{clip:02d}.mp4", 10)
    (base / "README.txt").write_text("SurgicalActions160\n")
    return root


BUILDERS = {
    "cholec80": cholec80,
    "m2cai16": m2cai16,
    "heichole": heichole,
    "pitvis": pitvis,
    "psiava": psiava,
    "autolaparo": autolaparo,
    "bernbypass70": lambda r: bypass(r, "BBP"),
    "strasbypass70": lambda r: bypass(r, "SBP"),
    "gensurgery": gensurgery,
    "cataracts": cataracts,
    "cataract21": cataract21,
    "cataract101": cataract101,
    "esd57": esd57,
    "pmlr50": pmlr50,
    "cholect50": cholect50,
    "prostate21": prostate21,
    "cholec80_cvs": cholec80_cvs,
    "endoscapes": endoscapes,
    "surgicalactions160": surgicalactions160,
}
