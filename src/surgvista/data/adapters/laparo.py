"""AutoLaparo, PitVis, PSI-AVA, Bern/StrasBypass70 and generic web-video folders (docs/datasets.md)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from surgvista.data.adapters.base import (
    VIDEO_EXTENSIONS,
    Adapter,
    PrepareError,
    Source,
    Timeline,
    find_ci,
    image_files,
    numeric_key,
    parse_int,
    phase_labels,
    read_lines,
    register,
    sample_per_second,
    sequential_phase_ids,
    video_files,
)
from surgvista.data.annotations import AnnotationError, read_json

log = logging.getLogger(__name__)

AUTOLAPARO_PHASES = (
    "Preparation",
    "Dividing Ligament and Peritoneum",
    "Dividing Uterine Vessels and Ligament",
    "Transecting the Vagina",
    "Specimen Removal",
    "Suturing",
    "Washing",
)
PITVIS_STEPS = (
    "background",
    "nasal corridor creation",
    "anterior sphenoidotomy",
    "septum displacement",
    "sphenoid sinus clearance",
    "sellotomy",
    "durotomy",
    "tumour excision",
    "haemostasis",
    "synthetic graft placement",
    "fat graft placement",
    "gasket seal construct",
    "dural sealant",
    "nasal packing",
    "debris clearance",
)
BYPASS_PHASES = (
    "preparation",
    "gastric_pouch_creation",
    "omentum_division",
    "gastrojejunal_anastomosis",
    "anastomosis_test",
    "jejunal_separation",
    "closure_petersen_space",
    "jejunojejunal_anastomosis",
    "closure_mesenteric_defect",
    "cleaning_coagulation",
    "disassembling",
    "other_intervention",
)
BYPASS_OVERLAYS = {12: "out_of_body", 13: "severe_index"}


def read_autolaparo_labels(path: Path) -> list[int]:
    """``Frame<TAB>Phase`` header, then ``<second 1-based> <phase 1..7>``; returned 0-based per second."""
    lines = read_lines(path)
    if not lines or lines[0].split()[:2] != ["Frame", "Phase"]:
        raise AnnotationError(f"{path}: expected a 'Frame<TAB>Phase' header, got {lines[:1]}")
    rows = []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split()
        if len(parts) != 2:
            raise AnnotationError(f"{path}:{lineno}: expected '<frame><TAB><phase>', got {line!r}")
        rows.append((lineno, parts))
    return sequential_phase_ids(
        rows, path, len(AUTOLAPARO_PHASES), base=1, note=" (AutoLaparo labels are 1-based seconds)"
    )


@register
class AutoLaparo(Adapter):
    name = "autolaparo"
    description = "AutoLaparo task 1: videos/NN.mp4 + labels/label_NN.txt (1 row per second, 1-based)"
    splits = ("pretrain", "train", "val", "test")
    label_names = {"phase": list(AUTOLAPARO_PHASES)}

    def discover(self) -> list[Source]:
        root = self.raw
        task = [p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("task 1")]
        if task and not (root / "videos").is_dir():
            root = task[0]
        videos, labels = find_ci(root, "videos"), find_ci(root, "labels")
        if videos is None or labels is None:
            raise PrepareError(f"autolaparo: expected videos/ and labels/ under {root} (or 'Task 1 …/' inside it)")
        sources = []
        for video in video_files(videos):
            if not video.stem.isdigit():
                continue
            n = int(video.stem)
            split = ("pretrain", "train") if n <= 10 else ("val",) if n <= 14 else ("test",)
            ann = labels / f"label_{video.stem}.txt"
            if not ann.is_file():
                raise PrepareError(f"autolaparo: no label file {ann} for {video}")
            lab = phase_labels(sample_per_second, read_autolaparo_labels(ann), ann)
            sources.append(Source(video.stem, split, video, annotation_files=(ann,), labels=lab))
        return sources


def read_pitvis_steps(path: Path) -> list[int]:
    """``int_video,int_time,int_step,…`` one row per second; step −1 (background) → 0, steps 1..14 kept."""
    lines = read_lines(path)
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    if "int_time" not in header or "int_step" not in header:
        raise AnnotationError(f"{path}: expected a header with int_time,int_step, got {lines[:1]}")
    t_col, s_col = header.index("int_time"), header.index("int_step")
    values = []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split(",")
        t = parse_int(parts[t_col], path, lineno, "int_time")
        step = parse_int(parts[s_col], path, lineno, "int_step")
        if t != len(values):
            raise AnnotationError(f"{path}:{lineno}: int_time {t} out of order, expected {len(values)}")
        if step != -1 and not 1 <= step <= 14:
            raise AnnotationError(f"{path}:{lineno}: unknown step {step}; expected -1 or 1..14")
        values.append(0 if step == -1 else step)
    return values


@register
class PitVis(Adapter):
    name = "pitvis"
    description = "PitVis: flat video_NN.mp4 + annotations_NN.csv (one row per second, steps -1/1..14)"
    splits = ("pretrain",)
    label_names = {"phase": list(PITVIS_STEPS)}

    def discover(self) -> list[Source]:
        root = self.raw
        if not any(root.glob("video_*.mp4")):
            inner = [p for p in root.iterdir() if p.is_dir() and any(p.glob("video_*.mp4"))]
            root = inner[0] if inner else root
        sources = []
        for video in video_files(root):
            m = re.fullmatch(r"video_(\d+)", video.stem)
            if not m:
                continue
            ann = root / f"annotations_{m.group(1)}.csv"
            labels = phase_labels(sample_per_second, read_pitvis_steps(ann), ann) if ann.is_file() else None
            if labels is None:
                log.warning(
                    "pitvis: %s has no annotation file %s (annotations_19.csv is absent in the official "
                    "download): no labels",
                    video.name,
                    ann.name,
                )
            sources.append(
                Source(video.stem, ("pretrain",), video, labels=labels, annotation_files=(ann,) if labels else ())
            )
        return sources


@register
class PSIAVA(Adapter):
    name = "psiava"
    description = "PSI-AVA: keyframes/CASE001/00000.jpg … (1-fps JPEG keyframes)"
    splits = ("pretrain",)
    folds = {1: ("CASE001", "CASE004", "CASE014", "CASE015"), 2: ("CASE002", "CASE003", "CASE007", "CASE021")}

    def meta(self) -> dict:
        return {"fold1_train": list(self.folds[1]), "fold2_train": list(self.folds[2])}

    def discover(self) -> list[Source]:
        keyframes = self.find("keyframes", "PSI-AVA/keyframes")
        sources = []
        for case in sorted(keyframes.iterdir(), key=numeric_key):
            if case.is_dir() and re.fullmatch(r"CASE\d+", case.name, re.IGNORECASE):
                sources.append(Source(case.name, ("pretrain",), case, frames=image_files(case)))
        return sources


def read_bypass_phases(path: Path) -> list[tuple[float, float, int]]:
    """Phase intervals ``(start_s, end_s, id)`` of a MultiBypass140 ``*.mp4.json`` (ms; overlays 12/13 dropped)."""
    data = read_json(path)
    try:
        items = data["phases"]
        out = []
        for i, it in enumerate(items):
            pid = int(it["label_id"])
            if pid in BYPASS_OVERLAYS:
                continue
            if not 0 <= pid < len(BYPASS_PHASES):
                raise AnnotationError(f"{path}: phases[{i}] has unknown label_id {pid}; expected 0..13")
            out.append((it["start"] / 1000, it["end"] / 1000, pid))
    except (KeyError, TypeError, ValueError) as e:
        raise AnnotationError(f"{path}: not a MultiBypass140 label file ({type(e).__name__}: {e})") from e
    return out


def sample_intervals(intervals, tl: Timeline) -> list[int]:
    out = []
    for t in tl.times:
        hit = [pid for start, end, pid in intervals if start <= t < end]
        out.append(hit[-1] if hit else -1)
    return out


class _Bypass(Adapter):
    prefix = ""
    folder = ""
    splits = ("pretrain",)
    label_names = {"phase": list(BYPASS_PHASES)}

    def discover(self) -> list[Source]:
        videos = self.find(f"{self.folder}/videos", "videos", f"MultiBypass140/{self.folder}/videos")
        labels = self.find(
            f"labels/{'bern' if self.prefix == 'BBP' else 'strasbourg'}/labels_by70",
            "labels_by70",
            "labels",
            required=False,
        )
        sources = []
        for video in video_files(videos):
            if not re.fullmatch(rf"{self.prefix}\d+", video.stem):
                continue
            ann = labels / f"{video.name}.json" if labels else None
            lab = phase_labels(sample_intervals, read_bypass_phases(ann)) if ann is not None and ann.is_file() else None
            sources.append(Source(video.stem, ("pretrain",), video, labels=lab, annotation_files=(ann,) if lab else ()))
        return sources


@register
class BernBypass70(_Bypass):
    name, prefix, folder = "bernbypass70", "BBP", "BernBypass70"
    description = "BernBypass70: BernBypass70/videos/BBPNN.mp4 (+ labels/bern/labels_by70/BBPNN.mp4.json)"


@register
class StrasBypass70(_Bypass):
    name, prefix, folder = "strasbypass70", "SBP", "StrasBypass70"
    description = "StrasBypass70: StrasBypass70/videos/SBPNN.mp4 (+ labels/strasbourg/labels_by70/SBPNN.mp4.json)"


@register
class GenSurgery(Adapter):
    name = "gensurgery"
    description = "folder of web videos (yt-dlp '<id>.<title>.<ext>', any container); drops videos < 60 s"
    splits = ("pretrain",)
    min_seconds = 60.0

    def discover(self) -> list[Source]:
        files = sorted(
            (
                p
                for p in self.raw.rglob("*")
                if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.endswith((".part", ".ytdl"))
            ),
            key=lambda p: str(p.relative_to(self.raw)),
        )
        sources, seen = [], {}
        for f in files:
            vid = re.sub(r"[^A-Za-z0-9_-]", "_", f.name.split(".")[0]) or "video"
            if vid in seen:
                seen[vid] += 1
                vid = f"{vid}_{seen[vid]}"
            else:
                seen[vid] = 0
            sources.append(Source(vid, ("pretrain",), f, meta={"title": f.name}))
        return sources
