"""``surgvista-stream`` / ``python -m surgvista.stream``: online phase recognition of a video file, a frame folder,
a manifest's video or a live source with a fine-tuned phase checkpoint (docs/streaming.md).

Writes ``<out>/predictions/<video>.csv`` (``eval.py``'s prediction-file format) and ``<out>/latency.json``, prints
the latency table and ends with ``stream: <csv>`` (and ``offline: <csv>`` with ``--offline``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from surgvista.cli.common import user_errors
from surgvista.evaluation.predictions import safe_name
from surgvista.streaming import PhaseStream, StreamError
from surgvista.streaming.overlay import write_overlay
from surgvista.streaming.runner import (
    latency_report,
    report_table,
    run_side_by_side,
    run_stream,
    write_report,
    write_stream_csv,
)
from surgvista.streaming.sources import FrameFolderSource, FrameSource, LiveSource, VideoFileSource

LABELS = ("plain", "reuse")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="surgvista-stream", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a fine-tuned phase checkpoint (its run folder has config.yaml)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", type=Path, help="a video file (decoded with the run's data.backend)")
    src.add_argument("--frames", type=Path, help="a folder of frame images (at --fps)")
    src.add_argument("--manifest", type=Path, help="a manifest: stream its --video-id (default the first video)")
    src.add_argument("--live", help="a camera device (/dev/video0, with --format v4l2) or a network URL")
    p.add_argument("--video-id", default=None, help="with --manifest: which video")
    p.add_argument("--fps", type=float, default=None, help="frame rate of --frames (default: the model's)")
    p.add_argument("--format", default=None, help="PyAV input format of --live (e.g. v4l2)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU intra-op threads (default 1: more slows small models on shared cores)",
    )
    p.add_argument("--realtime", action="store_true", help="drop (and log) frames when falling behind real time")
    p.add_argument("--paced", action="store_true", help="deliver a file's frames at their timestamps")
    p.add_argument("--reuse-tubelets", action="store_true", help="cache tubelet embeddings across clips (exact)")
    p.add_argument("--onnx", action="store_true", help="also export <out>/model.onnx and time onnxruntime side by side")
    p.add_argument("--compare-reuse", action="store_true", help="also time plain and reuse side by side")
    p.add_argument("--expect-frames", type=int, default=None, help="fewer sampled frames is an error")
    p.add_argument("--overlay", type=Path, default=None, help="an overlay mp4 (phase, confidence, past phases)")
    p.add_argument("--offline", type=Path, default=None, help="eval.py's predictions folder of the same video")
    p.add_argument("--name", default=None, help="model name in the report (default: the checkpoint's run folder)")
    return p


def _manifest_source(args, stream: PhaseStream) -> tuple[FrameSource, list | None]:
    from surgvista.data.manifest import read_manifest

    entries = read_manifest(args.manifest).entries
    chosen = [e for e in entries if args.video_id in (None, e.video_id)]
    if not chosen:
        raise StreamError(f"{args.manifest}: no video {args.video_id!r}; has {[e.video_id for e in entries]}")
    entry = chosen[0]
    if entry.format == "video":
        source = VideoFileSource(entry.source, stream.model.backend)
    else:
        source = FrameFolderSource(entry.source, entry.fps or stream.fps)
    source.name = entry.video_id
    labels = entry.labels.get("phase")
    return source, labels if isinstance(labels, list) else None


def make_source(args, stream: PhaseStream) -> tuple[FrameSource, list | None]:
    """The frame source of the arguments and the targets of its frames (a manifest's labels, else none)."""
    if args.manifest is not None:
        return _manifest_source(args, stream)
    if args.video is not None:
        return VideoFileSource(args.video, stream.model.backend), None
    if args.frames is not None:
        return FrameFolderSource(args.frames, args.fps or stream.fps), None
    return LiveSource(args.live, args.format, name=safe_name(args.live)), None


def _write_overlay(args, run, stream: PhaseStream) -> None:
    """The overlay mp4 of the predicted frames (a frame dropped in real-time mode has no prediction to show)."""
    rows = [{"frame": p.frame, "phase": p.phase, "probs": p.probs} for p in run.predictions]
    predicted = {row["frame"] for row in rows}
    frames = [frame for i, frame in enumerate(run.frames) if i in predicted]
    path = write_overlay(frames, rows, stream.label_names, args.overlay, stream.fps)
    print(f"overlay: {path}")


def _stream_once(args, reuse: bool) -> tuple[PhaseStream, object, FrameSource, list | None]:
    stream = PhaseStream(args.checkpoint, args.device, reuse_tubelets=reuse)
    source, targets = make_source(args, stream)
    keep = args.overlay is not None
    run = run_stream(stream, source, args.realtime, args.paced, args.expect_frames, keep_frames=keep)
    return stream, run, source, targets


def compare_reuse(args, name: str) -> list[dict]:
    """Plain and tubelet-reusing streams fed the same frames side by side (one run); their reports."""
    streams = {label: PhaseStream(args.checkpoint, args.device, reuse_tubelets=label == "reuse") for label in LABELS}
    source, _ = make_source(args, streams["plain"])
    runs = run_side_by_side(streams, source)
    return [
        latency_report(runs[label], streams[label], f"{name} ({label}, side by side)", args.device,
                       reuse_tubelets=label == "reuse")
        for label in LABELS
    ]  # fmt: skip


def compare_onnx(args, name: str) -> list[dict]:
    """PyTorch and the exported model in onnxruntime fed the same frames side by side; their reports, the second
    with the largest probability difference from PyTorch."""
    streams = {
        "pytorch": PhaseStream(args.checkpoint, args.device),
        "onnxruntime": PhaseStream(args.checkpoint, "cpu", onnx=args.out / "model.onnx"),
    }
    source, _ = make_source(args, streams["pytorch"])
    runs = run_side_by_side(streams, source)
    devices = {"pytorch": args.device, "onnxruntime": "cpu"}
    reports = [latency_report(runs[k], streams[k], f"{name} ({k}, side by side)", devices[k]) for k in streams]
    pairs = zip(runs["pytorch"].predictions, runs["onnxruntime"].predictions)
    reports[1]["max_prob_diff_vs_pytorch"] = max(float(np.abs(a.probs - b.probs).max()) for a, b in pairs)
    return reports


def stream_command(args) -> list[str]:
    """Run the stream, write the CSV and the report; the closing lines."""
    name = args.name or args.checkpoint.resolve().parent.parent.name
    stream, run, source, targets = _stream_once(args, args.reuse_tubelets)
    label = "reuse" if args.reuse_tubelets else "plain"
    reports = [latency_report(run, stream, f"{name} ({label})", args.device, reuse_tubelets=args.reuse_tubelets)]
    if args.compare_reuse and stream.model.family == "clip":
        reports += compare_reuse(args, name)
    if args.onnx:
        reports += compare_onnx(args, name)
    csv_path = write_stream_csv(
        args.out / "predictions" / f"{safe_name(source.name)}.csv", run.predictions, stream.label_names, targets
    )
    write_report(args.out / "latency.json", reports)
    print(report_table(reports))
    for index in run.dropped:
        print(f"dropped: frame {index}")
    if args.overlay is not None:
        _write_overlay(args, run, stream)
    lines = [f"stream: {csv_path}"]
    if args.offline is not None:
        lines.append(f"offline: {args.offline / f'{safe_name(source.name)}.csv'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """0 when streamed; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with user_errors():
        for line in stream_command(args):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
