"""Critical view of safety: Cholec80-CVS (interval XLSX over Cholec80 videos) and Endoscapes2023 (docs/datasets.md)."""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

from surgvista.data.adapters.base import (
    Adapter,
    PrepareError,
    Source,
    find_ci,
    image_files,
    number,
    numeric_key,
    read_lines,
    register,
    video_files,
)
from surgvista.data.adapters.cholec import read_named_phases
from surgvista.data.annotations import CHOLEC80_PHASES, AnnotationError, read_json, read_text

log = logging.getLogger(__name__)

CVS_TEST = (5, 6, 7, 9, 14, 22, 24, 26, 29, 33, 35, 39, 53, 55, 61)
CVS_VAL = (1, 2, 10, 16, 17, 28, 32, 46, 47, 57, 59, 63, 65, 67, 70)
CRITERIA = ("two_structures", "cystic_plate", "hepatocystic_triangle")
ENDOSCAPES_CVS_FILES = ("annotation_ds_coco.json", "annotation_coco_vid.json")
CVS_COLUMNS = ("video", "initial_minute", "initial_second", "final_minute", "final_second", *CRITERIA)


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of an XLSX (first sheet) or CSV file as ``{lower-case header: text}``."""
    if path.suffix.lower() == ".xlsx":
        try:
            import openpyxl
        except ImportError as e:
            raise PrepareError(f"reading {path} needs openpyxl: pip install openpyxl") from e
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        rows = [["" if v is None else str(v) for v in row] for row in book.worksheets[0].iter_rows(values_only=True)]
        book.close()
    else:
        rows = list(csv.reader(io.StringIO(read_text(path), newline="")))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise AnnotationError(f"{path}: empty table")
    header = [h.strip().lower() for h in rows[0]]
    return [dict(zip(header, r)) for r in rows[1:]]


@register
class Cholec80CVS(Adapter):
    name = "cholec80_cvs"
    description = (
        "Cholec80-CVS: surgeons_annotations.xlsx (intervals) + the Cholec80 videos/ and phase_annotations/ "
        "(in --raw, or --videos <cholec80 root>)"
    )
    accepts_videos = True
    label_names = {"cvs": [f"total_{i}" for i in range(7)], "cvs_criteria": list(CRITERIA)}
    supports_no_extract = False  # clips are sub-ranges of the Cholec80 videos

    def meta(self) -> dict:
        return {
            "note": "one entry per annotated interval; cvs = total score 0-6 (sum of three 0/1/2 criteria), "
            "cvs_criteria = the three scores (0/1/2, repeated per frame); "
            "intervals cut at the first ClippingCutting frame"
        }

    def cholec80_folders(self) -> tuple[Path, Path | None]:
        """``videos/`` and ``phase_annotations/`` of Cholec80: under ``--videos`` when given, else under ``--raw``."""
        root = self.videos_root or self.raw
        videos = find_ci(root, "videos")
        if videos is None and self.videos_root is not None and video_files(root):
            videos = root  # --videos pointing at the videos/ folder itself
        if videos is None or not videos.is_dir():
            where = f"--videos {root}" if self.videos_root else f"--raw {root}"
            raise PrepareError(
                f"cholec80_cvs: no Cholec80 videos/ folder under {where}; the XLSX only holds intervals: pass "
                "--videos <cholec80 root> (the folder with videos/video01.mp4 ... and phase_annotations/)"
            )
        phases = find_ci(root, "phase_annotations") or find_ci(videos.parent, "phase_annotations")
        return videos, phases if phases is not None and phases.is_dir() else None

    def discover(self) -> list[Source]:
        tables = sorted(self.raw.glob("*.xlsx")) + sorted(self.raw.glob("data/*.xlsx"))
        if not tables:
            tables = sorted(self.raw.glob("*cvs*.csv"))
        if not tables:
            raise PrepareError(f"cholec80_cvs: no annotation XLSX (surgeons_annotations.xlsx) under {self.raw}")
        table = tables[0]
        rows = read_table(table)
        missing = [c for c in CVS_COLUMNS if rows and c not in rows[0]]
        if missing:
            raise AnnotationError(f"{table}: missing column(s) {missing}; found {list(rows[0]) if rows else []}")
        videos, phase_dir = self.cholec80_folders()
        by_number = {int(m.group(1)): v for v in video_files(videos) if (m := re.fullmatch(r"video(\d+)", v.stem))}
        sources, counters, self.skipped = [], {}, []
        for lineno, row in enumerate(rows, 2):
            where = f"{table}: row {lineno}"
            try:
                vid = number(row["video"])
                start = number(row["initial_minute"]) * 60 + number(row["initial_second"])
                end = number(row["final_minute"]) * 60 + number(row["final_second"])
                scores = [number(row[c]) for c in CRITERIA]
            except ValueError as e:
                raise AnnotationError(f"{where}: {e}") from None
            if any(not 0 <= s <= 2 for s in scores):
                raise AnnotationError(f"{where}: criterion scores {scores} outside 0..2")
            if vid not in by_number:
                raise PrepareError(f"{where}: video {vid} not found in {videos}")
            if end < start:
                log.warning("%s: interval ends (%ss) before it starts (%ss): skipped", where, end, start)
                self.skipped.append(f"{where}: final < initial")
                continue
            video = by_number[vid]
            limit, ann = None, ()
            if phase_dir is not None and (pf := find_ci(phase_dir, f"{video.stem}-phase.txt")) is not None:
                phases = read_named_phases(pf, CHOLEC80_PHASES)
                clipping = CHOLEC80_PHASES.index("ClippingCutting")
                limit = next((k for k, p in enumerate(phases) if p == clipping), None)
                ann = (pf,)
            k = counters[vid] = counters.get(vid, -1) + 1
            split = ("test",) if vid in CVS_TEST else ("val",) if vid in CVS_VAL else ("train",)
            labels = {"cvs": sum(scores), "criteria": scores}
            sources.append(
                Source(
                    f"{video.stem}_{k:02d}",
                    split,
                    video,
                    clip=(float(start), float(end)),
                    labels=(lambda lab: lambda tl: _clip_labels(lab, tl))(labels),
                    annotation_files=(table, *ann),
                    meta={"clip_frame_limit": limit, "same_video_as": ["cholec80", video.stem]},
                )
            )
        return sources


def _clip_labels(labels: dict, tl) -> dict:
    # clip-level total; the criteria per frame (a clip-level list would read as one value per frame)
    return {"cvs": labels["cvs"], "cvs_criteria": [list(labels["criteria"]) for _ in tl.native]}


@register
class Endoscapes(Adapter):
    name = "endoscapes"
    description = (
        "Endoscapes2023: {train,val,test}/<vid>_<frame>.jpg (1 fps) + {split}/annotation_ds_coco.json "
        "(or annotation_coco_vid.json)"
    )
    label_names = {"cvs": ["0 criteria", "1 criterion", "2 criteria", "3 criteria"], "cvs_criteria": ["C1", "C2", "C3"]}
    threshold = 0.5
    supports_no_extract = False  # frames are named <vid>_<frame>.jpg, not 0..N-1

    def meta(self) -> dict:
        return {
            "note": "cvs = number of criteria with mean score >= 0.5 at CVS keyframes (every 5 s), -1 elsewhere; "
            "cvs_criteria = the three mean-of-annotator scores (null elsewhere)"
        }

    def cvs_scores(self, folder: Path) -> tuple[Path, dict[str, list[float]]]:
        """``(file, {image file name: [C1, C2, C3]})`` of the CVS keyframes of one split folder.

        The CVS labels are in ``annotation_ds_coco.json`` (keyframes every 5 s) or ``annotation_coco_vid.json``
        (every frame, non-keyframes repeating the last keyframe: only ``is_ds_keyframe`` images are read).
        ``annotation_coco.json`` is the bounding-box subset (one frame per 30 s) and is not a CVS source.
        """
        for name in ENDOSCAPES_CVS_FILES:
            ann = find_ci(folder, name)
            if ann is not None and ann.is_file():
                break
        else:
            raise PrepareError(
                f"endoscapes: no CVS annotation file in {folder}: expected {' or '.join(ENDOSCAPES_CVS_FILES)} "
                "(the official release; annotation_coco.json holds only the bounding-box frames)"
            )
        data = read_json(ann)
        try:
            scores = {
                im["file_name"]: [float(c) for c in im["ds"]]
                for im in data["images"]
                if im.get("is_ds_keyframe", True) and im.get("ds") is not None
            }
        except (KeyError, TypeError, ValueError) as e:
            raise AnnotationError(f"{ann}: not a COCO file with images[].ds ({type(e).__name__}: {e})") from e
        if not scores:
            raise AnnotationError(f"{ann}: no image carries CVS scores (images[].ds on is_ds_keyframe images)")
        bad = next((k for k, v in scores.items() if len(v) != 3), None)
        if bad is not None:
            raise AnnotationError(f"{ann}: image {bad!r} has ds {scores[bad]}; expected three criteria [C1, C2, C3]")
        return ann, scores

    def discover(self) -> list[Source]:
        root = self.raw / "endoscapes" if (self.raw / "endoscapes").is_dir() else self.raw
        sources = []
        for split in ("train", "val", "test"):
            folder = root / split
            if not folder.is_dir():
                raise PrepareError(f"endoscapes: split folder {folder} not found")
            ann, scores = self.cvs_scores(folder)
            vids_file = root / f"{split}_vids.txt"
            listed = {number(x) for x in read_lines(vids_file)} if vids_file.is_file() else None
            groups: dict[int, list[Path]] = {}
            for f in image_files(folder):
                m = re.fullmatch(r"(\d+)_(\d+)", f.stem)
                if m:
                    groups.setdefault(int(m.group(1)), []).append(f)
            if listed is not None and set(groups) != listed:
                raise PrepareError(
                    f"endoscapes: videos in {folder} {sorted(set(groups) ^ listed)[:5]} disagree with {vids_file}"
                )
            for vid in sorted(groups):
                files = sorted(groups[vid], key=numeric_key)
                per_file = [scores.get(f.name) for f in files]
                thr = self.threshold

                def lab(tl, per_file=per_file, thr=thr):
                    crit = [per_file[k] for k in tl.native]
                    return {"cvs": [-1 if c is None else sum(x >= thr for x in c) for c in crit], "cvs_criteria": crit}

                sources.append(Source(str(vid), (split,), folder, frames=files, labels=lab, annotation_files=(ann,)))
        return sources
