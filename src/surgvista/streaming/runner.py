"""Run a :class:`PhaseStream` over a source: pacing, the real-time mode's logged drops, the latency report and
the per-frame CSV (``eval.py``'s prediction-file format, so ``surgvista-score`` scores a stream)."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgvista.evaluation.predictions import PROB_FORMAT, prob_columns
from surgvista.streaming.sources import FrameSource
from surgvista.streaming.stream import PhaseStream, Prediction, StreamError
from surgvista.utils.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class StreamRun:
    """Predictions of a run, the frames it dropped (real-time mode) and the per-frame timings."""

    predictions: list[Prediction] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    frames: list[np.ndarray] = field(default_factory=list)


def _drop(run: StreamRun, index: int, timestamp: float, behind: float) -> None:
    run.dropped.append(index)
    log.warning("dropped frame %d (t=%.3fs): %.1f ms behind real time", index, timestamp, behind * 1000)


def run_stream(
    stream: PhaseStream,
    source: FrameSource,
    realtime: bool = False,
    paced: bool = False,
    expected_frames: int | None = None,
    keep_frames: bool = False,
    on_prediction: Callable[[Prediction], None] | None = None,
) -> StreamRun:
    """Stream ``source`` through ``stream``. ``paced``: a file is delivered at its timestamps (a live source
    paces itself). ``realtime``: a sampled frame that arrives more than one model period late is dropped (buffered
    for later clips, no prediction) and logged. ``expected_frames``: fewer sampled frames is a :class:`StreamError`.
    """
    run, start = StreamRun(), time.perf_counter()
    stream.source_fps = stream.source_fps or source.source_fps
    for frame, ts in source:
        arrival = start + ts if paced else time.perf_counter()
        if paced and arrival > time.perf_counter():
            time.sleep(arrival - time.perf_counter())
        if not stream.due(ts):
            stream.push(frame, ts)
            continue
        behind = time.perf_counter() - arrival
        late = realtime and behind > 1.0 / stream.fps
        if late:
            _drop(run, stream.next_index, ts, behind)
        pred = stream.push(frame, ts, predict=not late)
        if keep_frames:
            run.frames.append(frame)
        if pred is not None:
            run.lag_ms.append((time.perf_counter() - arrival) * 1000)
            run.predictions.append(pred)
            if on_prediction is not None:
                on_prediction(pred)
    run.wall_s = time.perf_counter() - start
    got = stream.next_index
    if expected_frames is not None and got < expected_frames:
        raise StreamError(f"{source.name}: the stream ended early after {got} of {expected_frames} frames")
    return run


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 / mean (``None`` when empty)."""
    if not len(values):
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    v = np.asarray(values, np.float64)
    return {f"p{q}": float(np.percentile(v, q)) for q in (50, 95, 99)} | {"mean": float(v.mean())}


def latency_report(run: StreamRun, stream: PhaseStream, name: str, device: str, **extra) -> dict:
    """Per-frame compute ms, lag ms (frame timestamp → prediction), sustained fps, drops."""
    n = len(run.predictions)
    clip = getattr(stream, "clip", None)
    if clip is not None and clip.reuse:
        extra["tubelet_cache"] = {"hits": clip.hits, "misses": clip.misses}
    return {
        "model": name,
        "family": stream.model.family,
        "device": device,
        "frames": stream.next_index,
        "predictions": n,
        "dropped": len(run.dropped),
        "dropped_frames": run.dropped,
        "compute_ms": percentiles([p.compute_ms for p in run.predictions]),
        "lag_ms": percentiles(run.lag_ms),
        "sustained_fps": n / run.wall_s if run.wall_s > 0 else None,
        "model_fps": stream.fps,
        **extra,
    }


def report_table(reports: Sequence[dict]) -> str:
    """A Markdown table of latency reports."""

    def f(x):
        return "–" if x is None else f"{x:.1f}"

    lines = [
        "| model | device | frames | dropped | ms p50 | ms p95 | ms p99 | lag p50 | lag p95 | lag p99 | fps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        c, lag = r["compute_ms"], r["lag_ms"]
        lines.append(
            f"| {r['model']} | {r['device']} | {r['predictions']} | {r['dropped']} | {f(c['p50'])} | {f(c['p95'])} "
            f"| {f(c['p99'])} | {f(lag['p50'])} | {f(lag['p95'])} | {f(lag['p99'])} | {f(r['sustained_fps'])} |"
        )
    return "\n".join(lines)


def write_report(path: str | Path, reports: Sequence[dict]) -> Path:
    """The reports as JSON (atomic)."""
    return atomic_write_text(path, json.dumps(list(reports), indent=2) + "\n")


def write_stream_csv(
    path: str | Path,
    predictions: Sequence[Prediction],
    label_names: Sequence[str],
    targets: Sequence[int] | None = None,
) -> Path:
    """``frame,target,prediction,prob_<class>…`` (``target`` -1 when unknown), written atomically."""
    if not predictions:
        raise StreamError(f"{path}: no predictions to write (the stream had no frame at the model's rate)")

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["frame", "target", "prediction", *prob_columns(label_names, len(label_names))])
            for p in predictions:
                target = int(targets[p.frame]) if targets is not None and p.frame < len(targets) else -1
                w.writerow([p.frame, target, p.phase, *(f"{x:{PROB_FORMAT}}" for x in p.probs)])

    return atomic_write(path, write)


def run_side_by_side(streams: dict[str, PhaseStream], source: FrameSource) -> dict[str, StreamRun]:
    """Feed every frame of ``source`` to each stream in turn (alternating which goes first), so that timings of
    settings compared on a shared machine see the same load; all streams must agree on the frames they sample."""
    runs = {name: StreamRun() for name in streams}
    order, start = list(streams), time.perf_counter()
    for s in streams.values():
        s.source_fps = s.source_fps or source.source_fps
    for k, (frame, ts) in enumerate(source):
        for name in order if k % 2 == 0 else order[::-1]:
            arrival = time.perf_counter()
            pred = streams[name].push(frame, ts)
            if pred is not None:
                runs[name].predictions.append(pred)
                runs[name].lag_ms.append((time.perf_counter() - arrival) * 1000)
    for run in runs.values():
        run.wall_s = time.perf_counter() - start
    return runs
