"""Cholecystectomy workflow sets: Cholec80, M2CAI16-workflow, HeiChole (docs/datasets.md)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from surgvista.data.adapters.base import (
    Adapter,
    PrepareError,
    Source,
    check_length,
    class_index,
    find_ci,
    numeric_key,
    parse_int,
    phase_labels,
    read_lines,
    register,
    sample_per_frame,
    sequential_phase_ids,
    video_files,
)
from surgvista.data.annotations import CHOLEC80_PHASES, AnnotationError

log = logging.getLogger(__name__)

M2CAI16_PHASES = ("TrocarPlacement", *CHOLEC80_PHASES)
HEICHOLE_PHASES = (
    "Preparation",
    "Calot triangle dissection",
    "Clipping and cutting",
    "Galbladder dissection",
    "Galbladder packaging",
    "Cleaning and coagulation",
    "Galbladder retraction",
)


def read_named_phases(path: Path, names) -> list[int]:
    """``Frame<TAB>Phase`` header, then ``<frame 0-based> <PhaseName>`` for every native frame, in order."""
    lines = read_lines(path)
    if not lines or lines[0].split()[:2] != ["Frame", "Phase"]:
        raise AnnotationError(f"{path}: expected a 'Frame<TAB>Phase' header, got {lines[:1]}")
    lookup = class_index(names, path, "phase name")
    phases = []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise AnnotationError(f"{path}:{lineno}: expected '<frame><TAB><phase>', got {line!r}")
        frame = parse_int(parts[0], path, lineno, "frame number")
        if frame != len(phases):
            raise AnnotationError(f"{path}:{lineno}: frame {frame} out of order, expected {len(phases)}")
        phases.append(lookup(parts[1].strip(), lineno))
    return phases


def _per_frame(path: Path, names):
    values = read_named_phases(path, names)  # parsed now: errors surface before any extraction
    return phase_labels(sample_per_frame, values, path)


CHOLEC80_TOOLS = ("Grasper", "Bipolar", "Hook", "Scissors", "Clipper", "Irrigator", "SpecimenBag")


def read_tool_file(path: Path) -> list[list[int]]:
    """``Frame<TAB>Grasper…SpecimenBag`` header, then one 0/1 row every 25 native frames (0, 25, 50, …)."""
    lines = read_lines(path)
    header = lines[0].split() if lines else []
    if header != ["Frame", *CHOLEC80_TOOLS]:
        raise AnnotationError(f"{path}: expected the header 'Frame' + {list(CHOLEC80_TOOLS)}, got {lines[:1]}")
    rows = []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split()
        frame = parse_int(parts[0], path, lineno, "frame number")
        if frame != 25 * len(rows) or len(parts) != 8 or any(p not in ("0", "1") for p in parts[1:]):
            raise AnnotationError(f"{path}:{lineno}: expected frame {25 * len(rows)} and 7 values 0/1, got {line!r}")
        rows.append([int(p) for p in parts[1:]])
    return rows


def sample_tools(rows: list[list[int]], path: Path, tl) -> list:
    """Tool presence of the nearest annotated frame (every 25 native frames); null past the table."""
    check_length(path, len(rows), -(-tl.native_count // 25), "rows (one per 25 frames)", 1)
    out = []
    for k in tl.native:
        j = round(k / 25)
        out.append(rows[j] if j < len(rows) else None)
    return out


@register
class Cholec80(Adapter):
    name = "cholec80"
    description = "Cholec80: videos/videoNN.mp4 + phase_annotations/videoNN-phase.txt (25 fps, 7 phases)"
    variants = ("40-40", "40-8-32")
    splits = ("pretrain", "train", "val", "test")
    label_names = {"phase": list(CHOLEC80_PHASES), "tool": list(CHOLEC80_TOOLS)}

    def split_of(self, number: int) -> tuple[str, ...]:
        if number <= 40:
            return ("pretrain", "train")
        if self.variant == "40-40":
            return ("val", "test")  # reference protocol: validation = test
        return ("val",) if number <= 48 else ("test",)

    def meta(self) -> dict:
        return {"val_is_test": self.variant == "40-40"}

    def discover(self) -> list[Source]:
        videos = self.find("videos")
        phases = self.find("phase_annotations")
        tools = self.find("tool_annotations", required=False)
        sources = []
        for video in video_files(videos):
            m = re.fullmatch(r"video(\d+)", video.stem)
            if not m:
                continue
            ann = find_ci(phases, f"{video.stem}-phase.txt")
            if ann is None:
                raise PrepareError(f"cholec80: no phase file {phases / (video.stem + '-phase.txt')} for {video}")
            files, phase_fn, tool_fn = (ann,), _per_frame(ann, CHOLEC80_PHASES), None
            tool = find_ci(tools, f"{video.stem}-tool.txt") if tools else None
            if tool is not None:
                rows = read_tool_file(tool)
                files += (tool,)
                tool_fn = (lambda r, t: lambda tl: sample_tools(r, t, tl))(rows, tool)
            labels = (lambda p, t: lambda tl: {**p(tl), **({"tool": t(tl)} if t else {})})(phase_fn, tool_fn)
            sources.append(
                Source(video.stem, self.split_of(int(m.group(1))), video, labels=labels, annotation_files=files)
            )
        return sources


@register
class M2CAI16(Adapter):
    name = "m2cai16"
    description = "M2CAI16-workflow: train_dataset/workflow_video_NN.mp4 (+ .txt), test_dataset/test_workflow_video_NN"
    splits = ("pretrain", "train", "val", "test")
    label_names = {"phase": list(M2CAI16_PHASES)}
    val_is_test = True

    def discover(self) -> list[Source]:
        sources = []
        for folder, pattern, splits in (
            (self.find("train_dataset"), r"workflow_video_(\d+)", ("pretrain", "train")),
            (self.find("test_dataset"), r"test_workflow_video_(\d+)", ("val", "test")),
        ):
            for video in video_files(folder):
                if not re.fullmatch(pattern, video.stem):
                    continue
                ann = video.with_suffix(".txt")
                if not ann.is_file():
                    raise PrepareError(f"m2cai16: no phase file {ann} for {video}")
                sources.append(
                    Source(video.stem, splits, video, labels=_per_frame(ann, M2CAI16_PHASES), annotation_files=(ann,))
                )
        return sources


def read_heichole_phases(path: Path) -> list[int]:
    """``<frame>,<phase 0-6>`` per native frame (no header; a header line is tolerated)."""
    rows = []
    for lineno, line in enumerate(read_lines(path), 1):
        parts = line.split(",")
        if lineno == 1 and not parts[0].strip().lstrip("-").isdigit():
            continue  # header
        if len(parts) < 2:
            raise AnnotationError(f"{path}:{lineno}: expected '<frame>,<phase>', got {line!r}")
        rows.append((lineno, parts))
    return sequential_phase_ids(rows, path, len(HEICHOLE_PHASES))


@register
class HeiChole(Adapter):
    name = "heichole"
    description = "HeiChole: Videos/Full/Hei-CholeN.mp4 + Annotations/Phase/Hei-CholeN_Annotation_Phase.csv"
    splits = ("pretrain",)
    label_names = {"phase": list(HEICHOLE_PHASES)}

    def discover(self) -> list[Source]:
        videos = self.find("Videos/Full", "Videos")
        phase_dir = self.find("Annotations/Phase", required=False)
        sources = []
        for video in sorted(video_files(videos), key=numeric_key):  # the SD copies; HD/ is a sub-folder
            if not re.fullmatch(r"hei-chole\d+", video.stem.lower()):
                continue
            ann = find_ci(phase_dir, f"{video.stem}_Annotation_Phase.csv") if phase_dir else None
            labels = phase_labels(sample_per_frame, read_heichole_phases(ann), ann) if ann is not None else None
            if ann is None:
                log.info("heichole: no phase annotation for %s (test video?): no labels", video.name)
            sources.append(
                Source(video.stem, ("pretrain",), video, labels=labels, annotation_files=(ann,) if ann else ())
            )
        return sources
