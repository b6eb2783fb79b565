"""``surgvista-score`` / ``python -m surgvista.score``: the usage is ``surgvista.evaluation.scoring``'s docstring."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from surgvista.cli.common import user_errors
from surgvista.evaluation import scoring
from surgvista.evaluation.scoring import (
    dataset_phase_names,
    load_clips,
    load_phase_videos,
    load_triplet_videos,
    per_video_rows,
    phase_num_classes,
    phase_video_records,
    score_clip,
    score_phase,
    score_triplet,
)
from surgvista.evaluation.uncertainty import phase_options
from surgvista.metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from surgvista.utils.io import atomic_write_text


def _relaxed(text: str) -> bool | str:
    value = {"auto": "auto", "true": True, "false": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"--relaxed must be auto, true or false, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The sub-commands ``phase``, ``triplet`` and ``clip`` of ``surgvista-score``."""
    p = argparse.ArgumentParser(
        prog="surgvista-score",
        description=scoring.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=scoring.__doc__,
    )
    sub = p.add_subparsers(dest="task", required=True)
    ph = sub.add_parser("phase", help="per-frame phase recognition (Evaluate.m/Main.m convention)")
    ph.add_argument("gt_dir", type=Path)
    ph.add_argument("pred_dir", type=Path)
    ph.add_argument("--dataset", required=True, help="relaxation rules and phase names (cholec80, autolaparo, ...)")
    ph.add_argument("--relaxed", type=_relaxed, default="auto", help="auto (default) | true | false")
    ph.add_argument(
        "--no-matlab-quirk",
        dest="matlab",
        action="store_false",
        help="the corrected early-transition rule instead of Evaluate.m's indexing",
    )
    ph.add_argument("--fps", type=float, default=1.0, help="frame rate of the ground truth (window = 10 s)")
    ph.add_argument(
        "--resample", type=float, default=None, metavar="PRED_FPS",
        help="the predictions' frame rate: map them onto the ground truth's frames (latest prediction at or before)",
    )  # fmt: skip
    ph.add_argument("--num-classes", type=int, default=None, help="for integer ids of an unknown --dataset")
    ph.add_argument(
        "--surgmotion", action="store_true",
        help="also SurgMotion's per-video sklearn metrics sm_* (mean over videos; docs/metrics.md)",
    )  # fmt: skip
    ph.add_argument("--csv", type=Path, default=None, help="per-video scores")
    tr = sub.add_parser("triplet", help="action triplets: video-wise mAP (ivtmetrics protocol)")
    tr.add_argument("gt_dir", type=Path)
    tr.add_argument("pred_dir", type=Path)
    tr.add_argument("--num-classes", type=int, default=100)
    cl = sub.add_parser("clip", help="clip-level classification (CVS, actions): one CSV each")
    cl.add_argument("gt", type=Path)
    cl.add_argument("pred", type=Path)
    cl.add_argument("--top-k", default="1,5", help="comma-separated k of the top-k accuracies")
    for s in (ph, tr, cl):
        s.add_argument("--json", type=Path, default=None, help="write the metrics (metrics.json keys; --ci: + 'ci')")
        s.add_argument("--ci", action="store_true", help="95 %% bootstrap intervals over the videos")
        s.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (--ci)")
        s.add_argument("--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed (--ci)")
        s.add_argument("--per-video", type=Path, default=None, help="write per_video.json (for leaderboard --compare)")
    return p


def run_phase(args: argparse.Namespace) -> tuple[dict[str, float], str, list[dict], dict]:
    """Phase scores, title, per-video records and their scoring options."""
    names = dataset_phase_names(args.dataset)
    resample = (args.resample, args.fps) if args.resample is not None else None
    videos = load_phase_videos(args.gt_dir, args.pred_dir, names, resample)
    num_classes = phase_num_classes(videos, names, args.num_classes)
    options = {"dataset": args.dataset, "fps": args.fps, "relaxed": args.relaxed, "matlab": args.matlab}
    scores = score_phase(videos, num_classes, **options, surgmotion=args.surgmotion)
    if args.csv is not None:
        write_csv(args.csv, per_video_rows(videos, num_classes))
    records = []
    if args.ci or args.per_video:
        records = phase_video_records(videos, num_classes, **options, surgmotion=args.surgmotion)
    return scores, f"{args.dataset}: {len(videos)} videos", records, phase_options(**options)


def run(args: argparse.Namespace) -> tuple[dict[str, float], str, list[dict], dict]:
    """Scores, the Markdown table, the per-video records (with ``--ci``/``--per-video``) and their options."""
    from surgvista.metrics import CHOLECT50, metrics_table
    from surgvista.metrics.per_video import clip_records, triplet_records

    records, options = [], {}
    if args.task == "phase":
        scores, title, records, options = run_phase(args)
    elif args.task == "triplet":
        scores, title = score_triplet(args.gt_dir, args.pred_dir, args.num_classes), "triplets"
        if args.ci or args.per_video:
            keys, targets, probs = load_triplet_videos(args.gt_dir, args.pred_dir, args.num_classes)
            cmap = CHOLECT50 if args.num_classes == CHOLECT50.num_triplets else None
            records = triplet_records(targets, probs, keys, cmap)
    else:
        top_k = [int(k) for k in args.top_k.split(",")]
        scores, title = score_clip(args.gt, args.pred, top_k), "clips"
        if args.ci or args.per_video:
            ids, probs, target, _ = load_clips(args.gt, args.pred)
            records = clip_records(probs, target, ids)
    return scores, metrics_table(scores, title=title), records, options


def intervals(args: argparse.Namespace, records: list[dict]) -> tuple[dict, str]:
    """``ci.json``'s content and the Markdown table of the bootstrap intervals."""
    from surgvista.evaluation.uncertainty import ci_document, ci_table, confidence_intervals

    if args.resamples < 1:
        raise ValueError(f"--resamples must be >= 1, got {args.resamples}")
    ci = confidence_intervals(args.task, records, args.resamples, args.seed)
    title = f"95 % bootstrap intervals ({args.resamples} resamples of the {len(records)} videos, seed {args.seed})"
    return ci_document(ci, len(records), args.resamples, args.seed), ci_table(ci, title)


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV file (header: the first row's keys)."""
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, text.getvalue())


def main(argv: list[str] | None = None) -> int:
    """``surgvista-score``: 0 when scored; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    args = build_parser().parse_args(argv)
    with user_errors(ValueError):  # ScoreError, AnnotationError, PredictionFileError
        scores, table, records, options = run(args)
        ci, ci_md = intervals(args, records) if args.ci else (None, "")
    print(table, end="")
    print(("\n" + ci_md) if ci_md else "", end="")
    if args.per_video is not None:
        from surgvista.evaluation.uncertainty import jsonable

        doc = {"task": args.task, "options": options, "videos": records}
        atomic_write_text(args.per_video, json.dumps(jsonable(doc)) + "\n")
    if args.json is not None:
        from surgvista.metrics import nan_to_none

        payload = nan_to_none(scores) | ({"ci": ci} if ci is not None else {})
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
