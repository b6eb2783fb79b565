"""``surgvista-score`` / ``python -m surgvista.score``: the usage is ``surgvista.evaluation.scoring``'s docstring."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from surgvista.cli.common import user_errors
from surgvista.evaluation import scoring
from surgvista.evaluation.scoring import (
    dataset_phase_names,
    load_phase_videos,
    per_video_rows,
    phase_num_classes,
    score_clip,
    score_phase,
    score_triplet,
)


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
    ph.add_argument("--fps", type=float, default=1.0, help="frame rate of the files (window = 10 s)")
    ph.add_argument("--num-classes", type=int, default=None, help="for integer ids of an unknown --dataset")
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
        s.add_argument("--json", type=Path, default=None, help="write the metrics (metrics.json keys)")
    return p


def run(args: argparse.Namespace) -> tuple[dict[str, float], str]:
    """Scores and the Markdown table of the parsed command line."""
    from surgvista.metrics import metrics_table

    if args.task == "phase":
        names = dataset_phase_names(args.dataset)
        videos = load_phase_videos(args.gt_dir, args.pred_dir, names)
        num_classes = phase_num_classes(videos, names, args.num_classes)
        scores = score_phase(
            videos, num_classes, dataset=args.dataset, fps=args.fps, relaxed=args.relaxed, matlab=args.matlab
        )
        if args.csv is not None:
            write_csv(args.csv, per_video_rows(videos, num_classes))
        title = f"{args.dataset}: {len(videos)} videos"
    elif args.task == "triplet":
        scores, title = score_triplet(args.gt_dir, args.pred_dir, args.num_classes), "triplets"
    else:
        top_k = [int(k) for k in args.top_k.split(",")]
        scores, title = score_clip(args.gt, args.pred, top_k), "clips"
    return scores, metrics_table(scores, title=title)


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV file (header: the first row's keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    """``surgvista-score``: 0 when scored; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    args = build_parser().parse_args(argv)
    with user_errors(ValueError):  # ScoreError, AnnotationError, PredictionFileError
        scores, table = run(args)
    print(table, end="")
    if args.json is not None:
        from surgvista.metrics import nan_to_none

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(nan_to_none(scores), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
