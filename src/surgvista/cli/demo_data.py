"""Embedded demo dataset: small, seeded mp4 videos of synthetic laparoscopic "surgery".

    surgvista-demo-data --out data/demo [--videos 8] [--val-videos 2] [--seed 0]   (= python -m surgvista.demo_data)

What the videos show and how they are labelled: ``surgvista.data.demo``.
"""

from __future__ import annotations

import argparse

from surgvista.cli.common import user_errors
from surgvista.data.demo import generate_demo_dataset


def build_parser() -> argparse.ArgumentParser:
    """The options of ``surgvista-demo-data``."""
    parser = argparse.ArgumentParser(prog="surgvista-demo-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--val-videos", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``surgvista-demo-data``: 0 when written; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    args = build_parser().parse_args(argv)
    with user_errors(ValueError):
        train, val = generate_demo_dataset(args.out, args.videos, args.val_videos, seed=args.seed)
    print(f"wrote {train} and {val}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
