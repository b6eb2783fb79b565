"""Cataract surgery: CATARACTS 2020, Cataract-21, Cataract-101 (docs/datasets.md)."""

from __future__ import annotations

import bisect
import re
from pathlib import Path

from surgvista.data.adapters.base import (
    Adapter,
    LabelLengthError,
    PrepareError,
    Source,
    Timeline,
    class_index,
    find_ci,
    parse_int,
    phase_labels,
    read_lines,
    register,
    sample_per_frame,
    video_files,
)
from surgvista.data.annotations import AnnotationError

CATARACTS_STEPS = (
    "Idle",
    "Toric Marking",
    "Implant Ejection",
    "Incision",
    "Viscodilatation",
    "Capsulorhexis",
    "Hydrodissection",
    "Nucleus Breaking",
    "Phacoemulsification",
    "Vitrectomy",
    "Irrigation/Aspiration",
    "Preparing Implant",
    "Manual Aspiration",
    "Implantation",
    "Positioning",
    "OVD Aspiration",
    "Suturing",
    "Sealing Control",
    "Wound Hydratation",
)
CATARACTS_VAL = ("test01", "test07", "test14", "test16", "test19")
CATARACT21_PHASES = (
    "not_initialized",
    "Incision",
    "Viscoelasticum",
    "Rhexis",
    "Hydrodissektion",
    "Phako",
    "Irrigation-Aspiration",
    "Kapselpolishing",
    "Linsenimplantation",
    "Visco-Absaugung",
    "Tonisieren / Antibiotikum",
)
CATARACT21_RAW = {name: i for i, name in enumerate(CATARACT21_PHASES)} | {"Tonisieren": 10, "Antibiotikum": 10}
CATARACT101_PHASES = (
    "Incision",
    "Viscous agent injection",
    "Rhexis",
    "Hydrodissection",
    "Phacoemulsificiation",
    "Irrigation and aspiration",
    "Capsule polishing",
    "Lens implant setting-up",
    "Viscous agent removal",
    "Tonifying and antibiotics",
)


def read_frame_csv(path: Path, parse, header: bool | None = None) -> list:
    """``<frame>,<value>`` per native frame; the frame base (0 or 1) is taken from the first data row."""
    lines = read_lines(path)
    values, base = [], None
    for lineno, line in enumerate(lines, 1):
        parts = [p.strip() for p in line.split(",", 1)]
        if lineno == 1 and (header or (header is None and not parts[0].isdigit())):
            continue
        if len(parts) != 2:
            raise AnnotationError(f"{path}:{lineno}: expected '<frame>,<label>', got {line!r}")
        frame = parse_int(parts[0], path, lineno, "frame number")
        base = frame if base is None else base
        if base not in (0, 1):
            raise AnnotationError(f"{path}:{lineno}: first frame is {frame}; expected 0 or 1")
        if frame - base != len(values):
            raise AnnotationError(f"{path}:{lineno}: frame {frame} out of order, expected {len(values) + base}")
        values.append(parse(parts[1], lineno))
    if not values:
        raise AnnotationError(f"{path}: no label rows")
    return values


@register
class CATARACTS(Adapter):
    name = "cataracts"
    description = "CATARACTS 2020: videos/micro/{train,test}NN.mp4 + ground_truth/CATARACTS_2020/*_gt/<video>.csv"
    label_names = {"phase": list(CATARACTS_STEPS)}

    def discover(self) -> list[Source]:
        videos = self.find("videos/micro", "micro", "videos")
        gt_root = self.find("ground_truth/CATARACTS_2020", "ground_truth", "CATARACTS_2020")
        gt_dirs = [d for d in (find_ci(gt_root, n) for n in ("train_gt", "dev_gt", "test_gt")) if d is not None]
        if not gt_dirs:
            raise PrepareError(f"cataracts: no train_gt/dev_gt/test_gt folder under {gt_root}")
        n_steps = len(CATARACTS_STEPS)

        def parse(text: str, lineno: int, path: Path) -> int:
            step = parse_int(text, path, lineno, "step id")
            if not 0 <= step < n_steps:
                raise AnnotationError(f"{path}:{lineno}: unknown step {step}; expected 0..{n_steps - 1}")
            return step

        sources = []
        for video in video_files(videos):
            if not re.fullmatch(r"(train|test)\d+", video.stem):
                continue
            split = (
                ("train",) if video.stem.startswith("train") else ("val",) if video.stem in CATARACTS_VAL else ("test",)
            )
            ann = next((d / f"{video.stem}.csv" for d in gt_dirs if (d / f"{video.stem}.csv").is_file()), None)
            if ann is None:
                raise PrepareError(f"cataracts: no ground-truth csv {video.stem}.csv in {[str(d) for d in gt_dirs]}")
            values = read_frame_csv(ann, lambda t, n, a=ann: parse(t, n, a), header=True)
            labels = phase_labels(sample_per_frame, values, ann)
            sources.append(Source(video.stem, split, video, labels=labels, annotation_files=(ann,)))
        return sources


@register
class Cataract21(Adapter):
    name = "cataract21"
    description = "Cataract-21: training/case_XX.mp4 + case_XX.csv, validation/… (German phase names per frame)"
    label_names = {"phase": list(CATARACT21_PHASES)}
    val_is_test = True

    def discover(self) -> list[Source]:
        names = list(CATARACT21_RAW)
        sources = []
        for folder, split in (("training", ("train",)), ("validation", ("val", "test"))):
            root = self.find(folder)
            for video in video_files(root):
                ann = video.with_suffix(".csv")
                if not ann.is_file():
                    raise PrepareError(f"cataract21: no label csv {ann} for {video}")
                lookup = class_index(names, ann, "phase name")
                values = read_frame_csv(ann, lambda t, n, lk=lookup: CATARACT21_RAW[names[lk(t, n)]])
                labels = phase_labels(sample_per_frame, values, ann)
                sources.append(Source(video.stem, split, video, labels=labels, annotation_files=(ann,)))
        return sources


def read_cataract101(path: Path) -> dict[str, list[tuple[int, int]]]:
    """``VideoID;FrameNo;Phase`` rows of phase starts → ``{video id: [(frame, phase 0-based), …]}``."""
    lines = read_lines(path)
    if not lines or [h.strip() for h in lines[0].split(";")][:3] != ["VideoID", "FrameNo", "Phase"]:
        raise AnnotationError(f"{path}: expected a 'VideoID;FrameNo;Phase' header, got {lines[:1]}")
    out: dict[str, list[tuple[int, int]]] = {}
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split(";")
        if len(parts) < 3:
            raise AnnotationError(f"{path}:{lineno}: expected 'VideoID;FrameNo;Phase', got {line!r}")
        vid = str(parse_int(parts[0], path, lineno, "VideoID"))
        frame = parse_int(parts[1], path, lineno, "FrameNo")
        phase = parse_int(parts[2], path, lineno, "Phase")
        if not 1 <= phase <= len(CATARACT101_PHASES):
            raise AnnotationError(f"{path}:{lineno}: unknown phase {phase}; expected 1..{len(CATARACT101_PHASES)}")
        rows = out.setdefault(vid, [])
        if rows and frame < rows[-1][0]:
            raise AnnotationError(f"{path}:{lineno}: video {vid} frame {frame} before the previous row's {rows[-1][0]}")
        rows.append((frame, phase - 1))
    return out


def cataract101_labels(rows: list[tuple[int, int]], path: Path, tl: Timeline) -> list[int]:
    """Phase of each sampled native frame from the start rows (−1 before the first start / after an end row)."""
    end = None
    if len(rows) >= 2 and rows[-1][1] == rows[-2][1]:
        end, rows = rows[-1][0], rows[:-1]  # the repeated last phase marks the end of the annotated range
    last = end if end is not None else rows[-1][0]
    if last >= tl.native_count + tl.native_fps:
        raise LabelLengthError(f"{path}: annotations reach frame {last} but the video has {tl.native_count} frames")
    starts = [f for f, _ in rows]
    out = []
    for k in tl.native:
        j = bisect.bisect_right(starts, k) - 1
        out.append(-1 if j < 0 or (end is not None and k > end) else rows[j][1])
    return out


@register
class Cataract101(Adapter):
    name = "cataract101"
    description = "Cataract-101: videos/case_<id>.mp4 + annotations.csv (phase start frames, ';'-separated)"
    label_names = {"phase": list(CATARACT101_PHASES)}
    random_split = {"train": 60, "val": 13, "test": 28}

    def discover(self) -> list[Source]:
        ann = self.find("annotations.csv", kind="file")
        videos = self.find("videos", ".")
        table = read_cataract101(ann)
        sources = []
        for video in video_files(videos):
            m = re.fullmatch(r"(?:case_)?(\d+)", video.stem)
            if not m:
                continue
            vid = str(int(m.group(1)))
            if vid not in table:
                raise PrepareError(f"cataract101: video {video} has no rows in {ann}")
            labels = phase_labels(cataract101_labels, table[vid], ann)
            sources.append(Source(video.stem, (), video, annotation_files=(ann,), labels=labels))
        return sources
