"""``surgvista-leaderboard`` / ``python -m surgvista.leaderboard``: ``surgvista-leaderboard <multirun dir>``, or
``surgvista-leaderboard --compare A B`` (two run folders or ``per_video.json`` files): the paired bootstrap
difference A − B of every headline metric with its 95 % interval and p-value."""

from __future__ import annotations

import argparse
from pathlib import Path

import surgvista.evaluation.leaderboard as board
from surgvista.cli.common import user_errors
from surgvista.metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED


def build_parser() -> argparse.ArgumentParser:
    """The leaderboard's and the comparison's options."""
    parser = argparse.ArgumentParser(prog="surgvista-leaderboard", description=board.__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", help="a multirun folder (or any folder holding probe runs)")
    parser.add_argument("--out", default=None, help="where to write leaderboard.{csv,md} (default: root)")
    parser.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), default=None,
        help="paired bootstrap A − B of two evaluations on the same test videos (run folders or per_video.json)",
    )  # fmt: skip
    parser.add_argument(
        "--wandb", nargs="?", const="offline", choices=("offline", "online"), default=None,
        help="also log the table to W&B (a run with job_type=leaderboard in the sweep's group; default offline)",
    )  # fmt: skip
    parser.add_argument("--wandb-project", default="surgvista", help="W&B project of --wandb")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (--compare)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed (--compare)")
    return parser


def compare(a: str, b: str, resamples: int, seed: int) -> None:
    """Print the comparison table of runs ``a`` and ``b``."""
    from surgvista.evaluation.uncertainty import compare_runs, comparison_table

    diffs, metrics_a, metrics_b = compare_runs(a, b, resamples, seed)
    print(comparison_table(diffs, metrics_a, metrics_b, (a, b), resamples), end="")


def main(argv: list[str] | None = None) -> int:
    """``surgvista-leaderboard``: 0 when written; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.root is None) == (args.compare is None):
        parser.error("give either a folder of runs or --compare A B")
    if args.resamples < 1:
        parser.error(f"--resamples must be >= 1, got {args.resamples}")
    with user_errors():
        if args.compare is not None:
            compare(*args.compare, args.resamples, args.seed)
            return 0
        if not Path(args.root).is_dir():
            raise FileNotFoundError(f"{args.root} is not a folder")
        csv_path = board.leaderboard(args.root, args.out)
        if args.wandb:
            board.log_to_wandb(csv_path, args.root, args.wandb_project, offline=args.wandb == "offline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
