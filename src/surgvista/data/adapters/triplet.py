"""Action-triplet sets: CholecT50 and Prostate21 / ProstaTD (docs/datasets.md)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from surgvista.data.adapters.base import (
    Adapter,
    LabelLengthError,
    PrepareError,
    Source,
    Timeline,
    image_files,
    numeric_key,
    register,
)
from surgvista.data.annotations import AnnotationError, read_json
from surgvista.data.vocab import CHOLECT50_TRIPLETS

log = logging.getLogger(__name__)

# The official 5 folds of `cholect50-crossval` (docs/datasets.md), in the official loader's order.
CHOLECT50_FOLDS = (
    (79, 2, 51, 6, 25, 14, 66, 23, 50, 111),
    (80, 32, 5, 15, 40, 47, 26, 48, 70, 96),
    (31, 57, 36, 18, 52, 68, 10, 8, 73, 103),
    (42, 29, 60, 27, 65, 75, 22, 49, 12, 110),
    (78, 43, 62, 35, 74, 1, 56, 4, 13, 92),
)


def _crossval(k: int) -> dict[str, tuple[int, ...]]:
    """Fold ``k`` (1-based) is the test set; as the official loader, val = the last 5 of the other folds' list."""
    rest = [v for i, fold in enumerate(CHOLECT50_FOLDS, 1) if i != k for v in fold]
    return {"val": tuple(rest[-5:]), "test": CHOLECT50_FOLDS[k - 1]}


CHOLECT50_SPLITS = {
    "challenge": {"val": (5, 18, 36, 65, 74), "test": (92, 96, 103, 110, 111)},
    "camma": {"val": (8, 12, 29, 50, 78), "test": (6, 51, 10, 73, 14, 74, 32, 80, 42, 111)},
    **{f"crossval{k}": _crossval(k) for k in range(1, 6)},
}


def check_triplet_categories(categories: object, path: Path) -> None:
    """A CholecT50 JSON's ``categories.triplet`` must be the official 100-triplet table (a mismatch names the id)."""
    if categories is None:
        return
    if not isinstance(categories, dict):
        raise AnnotationError(f"{path}: categories.triplet must map id -> 'instrument,verb,target'")
    want = {str(i): name for i, name in enumerate(CHOLECT50_TRIPLETS)}
    extra = sorted(set(categories) - set(want), key=lambda k: (len(k), k))
    missing = sorted(set(want) - set(categories), key=int)
    if extra or missing:
        raise AnnotationError(
            f"{path}: categories.triplet has ids {extra[:5]} outside 0..99 / lacks ids {missing[:5]}; "
            "CholecT50 has exactly the 100 official triplets"
        )
    for key in sorted(want, key=int):
        got = str(categories[key]).replace(" ", "").lower()
        if got != want[key]:
            raise AnnotationError(
                f"{path}: categories.triplet id {key} is {categories[key]!r} but the official CholecT50 triplet "
                f"{key} is {want[key]!r}; is this another release's vocabulary?"
            )


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path`` (any other JSON value is an :class:`AnnotationError` naming the file)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def triplets_per_frame(annotations: dict, path: Path, n_classes: int, base: int = 0) -> dict[int, list[int]]:
    """``{frame number: sorted triplet ids}`` from ``{"<frame>": [[triplet, …], …]}`` (−1 = no triplet)."""
    out = {}
    for key, instances in annotations.items():
        try:
            frame = int(key)
            ids = sorted({int(inst[0]) - base for inst in instances if int(inst[0]) != -1})
        except (ValueError, TypeError, IndexError) as e:
            raise AnnotationError(f"{path}: frame {key!r}: malformed instance list ({e})") from e
        bad = [i for i in ids if not 0 <= i < n_classes]
        if bad:
            raise AnnotationError(
                f"{path}: frame {key}: triplet id(s) {[b + base for b in bad]} outside the {n_classes} classes"
            )
        out[frame] = ids
    return out


def _sample_frames(files: list[Path], per_frame: dict[int, object], path: Path, tl: Timeline, missing=None):
    numbers = [int(f.stem) for f in files]
    extra = sorted(set(per_frame) - set(numbers))
    if extra:
        raise LabelLengthError(
            f"{path}: annotates {len(per_frame)} frames, {len(extra)} of them have no image "
            f"among the video's {len(files)} frames (e.g. frame {extra[0]})"
        )
    return [per_frame.get(numbers[k], missing) for k in tl.native]


@register
class CholecT50(Adapter):
    name = "cholect50"
    description = "CholecT50: videos/VIDxx/000000.png (1 fps) + labels/VIDxx.json"
    variants = tuple(CHOLECT50_SPLITS)

    def __init__(self, raw: Path, variant: str | None = None, videos: Path | None = None) -> None:
        super().__init__(raw, variant, videos)
        self.label_names = {"triplet": list(CHOLECT50_TRIPLETS)}

    def meta(self) -> dict:
        return {"split_variant": self.variant}

    def discover(self) -> list[Source]:
        videos, labels = self.find("videos"), self.find("labels")
        split = CHOLECT50_SPLITS[self.variant]
        sources = []
        for folder in sorted((p for p in videos.iterdir() if p.is_dir()), key=numeric_key):
            m = re.fullmatch(r"VID(\d+)", folder.name)
            if not m:
                continue
            n = int(m.group(1))
            ann = labels / f"{folder.name}.json"
            if not ann.is_file():
                raise PrepareError(f"cholect50: no label file {ann} for {folder}")
            data = read_json_object(ann)
            if "annotations" not in data:
                raise AnnotationError(f"{ann}: no 'annotations' key (expected the CholecT50 JSON format)")
            cats = data.get("categories") or {}
            check_triplet_categories(cats.get("triplet"), ann)
            phase = cats.get("phase") or {}
            if phase and "phase" not in self.label_names:
                self.label_names["phase"] = [phase[k] for k in sorted(phase, key=int)]
            triplets = triplets_per_frame(data["annotations"], ann, len(self.label_names["triplet"]))
            phases = {}
            for key, instances in data["annotations"].items():
                ph = [int(inst[14]) for inst in instances if len(inst) > 14 and int(inst[14]) != -1]
                phases[int(key)] = ph[0] if ph else -1
            files = image_files(folder)
            if data.get("num_frames") not in (None, len(files)):
                raise LabelLengthError(
                    f"{ann}: num_frames is {data['num_frames']} but {folder} has {len(files)} frames"
                )
            which = ("val",) if n in split["val"] else ("test",) if n in split["test"] else ("train",)

            def lab(tl, files=files, triplets=triplets, phases=phases, ann=ann):
                return {
                    "triplet": _sample_frames(files, triplets, ann, tl),
                    "phase": _sample_frames(files, phases, ann, tl, missing=-1),
                }

            same = {"same_video_as": ["cholec80", f"video{n:02d}"]} if n <= 80 else {}  # CholecT50 ⊃ 45 Cholec80 videos
            sources.append(
                Source(folder.name, which, folder, frames=files, labels=lab, annotation_files=(ann,), meta=same)
            )
        return sources


@register
class Prostate21(Adapter):
    name = "prostate21"
    description = "Prostate21 (ProstaTD): frames/<split>/<video>/<n>.jpg + annos/<split>/<video>.json (1 fps)"
    n_triplets = 89

    def __init__(self, raw: Path, variant: str | None = None, videos: Path | None = None) -> None:
        super().__init__(raw, variant, videos)
        self.label_names = {"triplet": [f"triplet_{i}" for i in range(self.n_triplets)]}

    def discover(self) -> list[Source]:
        frames_root, annos_root = self.find("frames"), self.find("annos", "annotations", "labels")
        found = []
        for split in ("train", "val", "test"):
            fdir = frames_root / split
            if not fdir.is_dir():
                continue
            for folder in sorted((p for p in fdir.iterdir() if p.is_dir()), key=numeric_key):
                ann = annos_root / split / f"{folder.name}.json"
                if not ann.is_file():
                    raise PrepareError(f"prostate21: no annotation file {ann} for {folder}")
                data = read_json_object(ann)
                annotations = data.get("annotations", data)
                if not isinstance(annotations, dict):
                    raise AnnotationError(f"{ann}: expected a mapping 'frame id' -> instances")
                found.append((split, folder, ann, annotations))
        # id base: the labelme converter numbers triplets 1..89, the YOLO release 0..88 (docs/datasets.md)
        ids = {int(inst[0]) for *_, a in found for insts in a.values() for inst in insts if int(inst[0]) != -1}
        if 0 in ids and self.n_triplets in ids:
            raise AnnotationError(f"prostate21: triplet ids span 0..{self.n_triplets}: cannot tell the id base")
        base = 1 if self.n_triplets in ids else 0
        if ids and 0 not in ids and self.n_triplets not in ids:
            log.warning(
                "prostate21: triplet ids %d..%d do not reveal the id base; assuming 0-based", min(ids), max(ids)
            )
        self.id_base = base
        sources = []
        for split, folder, ann, annotations in found:
            triplets = triplets_per_frame(annotations, ann, self.n_triplets, base)
            files = image_files(folder)
            lab = (lambda f, t, a: lambda tl: {"triplet": _sample_frames(f, t, a, tl)})(files, triplets, ann)
            sources.append(Source(folder.name, (split,), folder, frames=files, labels=lab, annotation_files=(ann,)))
        return sources

    def meta(self) -> dict:
        return {
            "triplet_id_base_in_raw": getattr(self, "id_base", None),
            "note": "frames are the kept (annotated) frames in order; gaps in the numbering are collapsed",
        }
