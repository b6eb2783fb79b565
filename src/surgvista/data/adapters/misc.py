"""ESD57, PmLR50 and SurgicalActions160 (docs/datasets.md)."""

from __future__ import annotations

import re
from pathlib import Path

from surgvista.data.adapters.base import (
    Adapter,
    PrepareError,
    Source,
    image_files,
    numeric_key,
    phase_labels,
    read_lines,
    register,
    sample_per_image,
    sequential_phase_ids,
    video_files,
)
from surgvista.data.annotations import AnnotationError

PMLR50_SPLIT = {"train": (*range(1, 34), 49, 50), "val": (34, 35, 36, 37, 48), "test": tuple(range(38, 48))}
SA160_CLASSES = (
    "abdominal_access",
    "injection",
    "cutting",
    "blunt_dissection",
    "dissection_thermal",
    "irrigation",
    "coagulation",
    "suction",
    "needle_positioning",
    "needle_puncture",
    "knot_pushing",
    "knotting",
    "thread_cut",
    "sling-in",
    "endobag-in",
    "endobag-out",
)


def read_frame_phase_txt(path: Path, n_classes: int) -> list[int]:
    """Header line, then ``<frame 0-based> <phase>`` per 1-fps frame, in order (PmLR50, ESD57)."""
    lines = read_lines(path)
    rows = []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.replace(",", " ").split()
        if len(parts) < 2:
            raise AnnotationError(f"{path}:{lineno}: expected '<frame> <phase>', got {line!r}")
        rows.append((lineno, parts))
    values = sequential_phase_ids(rows, path, n_classes)
    if not values:
        raise AnnotationError(f"{path}: no label rows after the header")
    return values


class _FramePhaseSet(Adapter):
    """Frame folders + one ``<frame> <phase>`` text file per video."""

    frames_dir = "frames"
    labels_dir = ""
    n_classes = 0

    def split_of(self, vid: str) -> tuple[str, ...]:
        return ()

    def discover(self) -> list[Source]:
        frames, labels = self.find(self.frames_dir), self.find(self.labels_dir)
        sources = []
        for folder in sorted((p for p in frames.iterdir() if p.is_dir()), key=numeric_key):
            ann = labels / f"{folder.name}.txt"
            if not ann.is_file():
                raise PrepareError(f"{self.name}: no label file {ann} for {folder}")
            values = read_frame_phase_txt(ann, self.n_classes)
            files = image_files(folder)
            lab = phase_labels(sample_per_image, values, ann)
            sources.append(
                Source(
                    folder.name, self.split_of(folder.name), folder, frames=files, labels=lab, annotation_files=(ann,)
                )
            )
        return sources


@register
class ESD57(_FramePhaseSet):
    name = "esd57"
    description = "ESD57: frames/<id>/<n>.png + phases/<id>.txt (1 fps; 8 phases, names unpublished)"
    labels_dir = "phases"
    n_classes = 8
    label_names = {"phase": [f"phase_{i}" for i in range(8)]}
    random_split = {"train": 70, "val": 10, "test": 20}


@register
class PmLR50(_FramePhaseSet):
    name = "pmlr50"
    description = "PmLR50: frames/NN/00000000.jpg + phase_annotations/NN.txt (1 fps; 5 phases, names unpublished)"
    labels_dir = "phase_annotations"
    n_classes = 5
    label_names = {"phase": [f"phase_{i}" for i in range(5)]}

    def split_of(self, vid: str) -> tuple[str, ...]:
        n = int(vid) if vid.isdigit() else -1
        for split, ids in PMLR50_SPLIT.items():
            if n in ids:
                return (split,)
        raise PrepareError(f"pmlr50: video folder {vid!r} is not one of the 50 official videos 01..50")


@register
class SurgicalActions160(Adapter):
    name = "surgicalactions160"
    description = "SurgicalActions160: NN_<class>/NN_MM.mp4 (16 classes x 10 clips)"
    label_names = {"action": list(SA160_CLASSES)}
    default_fps = None  # clip-level: keep every frame
    random_split = {"train": 70, "test": 30}
    val_is_test = True

    def discover(self) -> list[Source]:
        root = self.raw / "SurgicalActions160" if (self.raw / "SurgicalActions160").is_dir() else self.raw
        sources = []
        for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=numeric_key):
            m = re.fullmatch(r"(\d+)_.+", folder.name)
            if not m:
                continue
            cls = int(m.group(1)) - 1
            if not 0 <= cls < len(SA160_CLASSES):
                raise PrepareError(f"surgicalactions160: class folder {folder} outside 01..16")
            labels = (lambda c: lambda tl: {"action": c})(cls)
            for clip in video_files(folder):
                sources.append(Source(clip.stem, (), clip, labels=labels, meta={"class_folder": folder.name}))
        return sources
