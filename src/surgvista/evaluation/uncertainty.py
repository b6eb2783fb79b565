"""Per-video files, bootstrap confidence intervals and paired comparisons of evaluations.

Every evaluation that writes metrics also writes, next to them:

* ``per_video.json``: ``{"task", "options", "videos": [record, ...]}`` (``surgvista.metrics.per_video``), what a
  bootstrap or a paired comparison needs; ``per_video.csv``: one readable row per video;
* ``ci.json`` / ``ci.md``: ``{"bootstrap": {resamples, seed, level, unit, videos}, "metrics": {name: {value, lo,
  hi}}}`` for the task's headline metrics (``metrics/bootstrap.py``: seeded video resamples, percentile interval).

``compare_runs`` is the paired bootstrap of two such files (``surgvista-leaderboard --compare A B``); it refuses
runs that are not on the same test videos.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from surgvista.metrics.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Difference,
    Interval,
    bootstrap_ci,
    paired_bootstrap,
)
from surgvista.metrics.per_video import HEADLINE, PHASE_SCORES, task_metric
from surgvista.metrics.stats import nanmean
from surgvista.metrics.surgmotion import SM_METRICS
from surgvista.utils.errors import UserError
from surgvista.utils.io import atomic_write_text

PER_VIDEO = "per_video.json"


class CompareError(UserError, ValueError):
    """Two evaluations that cannot be compared (different videos, tasks or scoring options)."""


def jsonable(x):
    """``x`` with NaN floats as ``None`` (nested dicts, lists and numpy values included)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    return x.item() if isinstance(x, np.generic) else x


def summary_row(task: str, record: dict) -> dict:
    """One readable ``per_video.csv`` row: phase: accuracy, phase-averaged (nanmean, clipped) J/P/R/F1 (and
    relaxed), edit, segmental F1, SurgMotion's ``sm_*`` when recorded; other tasks: the task's metrics on that
    video alone."""
    if task != "phase":
        return {"video": record["video"], **task_metric(task)([record])}
    row = {"video": record["video"], "frames": record["frames"]}
    for prefix in ("", "relaxed_") if "relaxed_correct" in record else ("",):
        row[prefix + "accuracy"] = record[prefix + "accuracy"]
        for name in PHASE_SCORES:
            values = np.asarray(record[prefix + name], dtype=np.float64)
            row[prefix + name] = nanmean(np.where(values > 100, 100.0, values))
    alone = task_metric("phase")([record])
    row.update({k: alone[k] for k in ("edit", *(k for k in record if k.startswith("f1@")))})
    row.update({k: record[k] for k in SM_METRICS if k in record})
    return row


def phase_options(dataset: str, fps: float, relaxed: bool | str, matlab: bool) -> dict:
    """The phase scoring options recorded in ``per_video.json`` (equal for one scoring, from an eval or from
    ``surgvista-score``, so that ``--compare`` accepts them)."""
    from surgvista.metrics.phase import normalise_dataset, resolve_relaxed

    relaxed = resolve_relaxed(relaxed, dataset)
    return {"dataset": normalise_dataset(dataset), "fps": fps, "relaxed": relaxed, "matlab_compatible": matlab}


def write_per_video(out_dir: str | Path, task: str, records: list[dict], options: dict | None = None) -> Path:
    """``per_video.json`` (records) and ``per_video.csv`` (summary rows) in ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"task": task, "options": options or {}, "videos": records}
    path = atomic_write_text(out / PER_VIDEO, json.dumps(jsonable(doc)) + "\n")
    rows = [summary_row(task, r) for r in records]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "per_video.csv", text.getvalue())
    return path


def confidence_intervals(
    task: str, records: list[dict], resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> dict[str, Interval]:
    """Bootstrap intervals of the task's headline metrics (``HEADLINE[task]``)."""
    return bootstrap_ci(records, task_metric(task), resamples=resamples, seed=seed, keys=HEADLINE[task])


def ci_document(ci: dict[str, Interval], videos: int, resamples: int, seed: int, level: float = DEFAULT_LEVEL):
    """The ``ci.json`` content."""
    boot = {"resamples": resamples, "seed": seed, "level": level, "unit": "video", "videos": videos}
    return {"bootstrap": boot, "metrics": {k: v.as_dict() for k, v in ci.items()}}


def ci_table(ci: dict[str, Interval], title: str) -> str:
    """Markdown ``metric | mean [lo, hi]``."""
    lines = [f"**{title}**", "", "| metric | mean [95 % CI] |", "|---|---:|"]
    return "\n".join(lines + [f"| {k} | {v} |" for k, v in ci.items()]) + "\n"


def write_uncertainty(
    out_dir: str | Path,
    task: str,
    records: list[dict],
    options: dict | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Per-video files and ``ci.{json,md}`` in ``out_dir``; returns the ``ci.json`` content."""
    out = Path(out_dir)
    write_per_video(out, task, records, options)
    ci = confidence_intervals(task, records, resamples, seed)
    doc = ci_document(ci, len(records), resamples, seed)
    atomic_write_text(out / "ci.json", json.dumps(doc, indent=1) + "\n")
    title = f"95 % bootstrap intervals ({resamples} resamples of the {len(records)} videos, seed {seed})"
    atomic_write_text(out / "ci.md", ci_table(ci, title))
    return doc


def find_per_video(path: str | Path) -> Path:
    """``per_video.json`` of a run: the file itself, ``<run>/per_video.json``, ``<run>/test/…`` or the only one
    below ``<run>``."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / PER_VIDEO, path / "test" / PER_VIDEO):
        if candidate.is_file():
            return candidate
    found = sorted(path.rglob(PER_VIDEO)) if path.is_dir() else []
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise CompareError(f"{path}: {what} {PER_VIDEO} found (pass a run folder of one evaluation or the file)")
    return found[0]


def load_per_video(path: str | Path) -> dict:
    """The ``per_video.json`` document of a run folder or file."""
    file = find_per_video(path)
    try:
        doc = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CompareError(f"{file}: not JSON ({e})") from e
    if not isinstance(doc, dict) or not {"task", "videos"} <= set(doc) or not doc["videos"]:
        raise CompareError(f"{file}: expected a per-video file with 'task' and a non-empty 'videos' list")
    doc["path"] = str(file)
    return doc


def aligned(a: dict, b: dict) -> tuple[list[dict], list[dict]]:
    """The records of ``a`` and ``b`` in one video order; an error unless they are the same test videos."""
    if a["task"] != b["task"] or a.get("options", {}) != b.get("options", {}):
        raise CompareError(
            f"{a['path']} ({a['task']}, {a.get('options')}) and {b['path']} ({b['task']}, {b.get('options')}) "
            "are not scored the same way"
        )
    va, vb = [r["video"] for r in a["videos"]], [r["video"] for r in b["videos"]]
    by_b = {r["video"]: r for r in b["videos"]}
    frames_differ = [v for v in va if v in by_b and by_b[v].get("frames") != a["videos"][va.index(v)].get("frames")]
    if set(va) != set(vb) or len(set(va)) != len(va) or len(set(vb)) != len(vb) or frames_differ:
        only_a, only_b = sorted(set(va) - set(vb)), sorted(set(vb) - set(va))
        raise CompareError(
            f"{a['path']} and {b['path']} are not on the same test videos (only in A: {only_a[:5]}, only in B: "
            f"{only_b[:5]}, different frame counts: {frames_differ[:5]})"
        )
    return list(a["videos"]), [by_b[v] for v in va]


def compare_runs(
    a: str | Path, b: str | Path, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> tuple[dict[str, Difference], dict[str, float], dict[str, float]]:
    """Paired bootstrap of run A minus run B on their headline metrics: ``(differences, metrics A, metrics B)``."""
    doc_a, doc_b = load_per_video(a), load_per_video(b)
    units_a, units_b = aligned(doc_a, doc_b)
    metric = task_metric(doc_a["task"])
    keys = HEADLINE[doc_a["task"]]
    diffs = paired_bootstrap(units_a, units_b, metric, resamples=resamples, seed=seed, keys=keys)
    return diffs, metric(units_a), metric(units_b)


def comparison_table(diffs: dict[str, Difference], a: dict, b: dict, names: Sequence[str], resamples: int) -> str:
    """Markdown ``metric | A | B | A − B [95 % CI] | p``."""
    lines = [
        f"**A = {names[0]}, B = {names[1]}: paired bootstrap over the same videos ({resamples} resamples)**",
        "",
        "| metric | A | B | A − B [95 % CI] | p |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, d in diffs.items():
        lines.append(f"| {k} | {a[k]:.2f} | {b[k]:.2f} | {d.diff:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}] | {d.p:.3g} |")
    return "\n".join(lines) + "\n"
