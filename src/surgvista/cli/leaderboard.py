"""Leaderboard of a frozen-probe grid: ``surgvista-leaderboard <multirun dir> [--out DIR]``.

Also ``python -m surgvista.leaderboard``. What the table holds: ``surgvista.evaluation.leaderboard``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from surgvista.cli.common import user_errors
from surgvista.evaluation.leaderboard import leaderboard


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``surgvista-leaderboard``."""
    parser = argparse.ArgumentParser(prog="surgvista-leaderboard", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="a multirun folder (or any folder holding probe runs)")
    parser.add_argument("--out", default=None, help="where to write leaderboard.{csv,md} (default: root)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``surgvista-leaderboard``: 0 when written; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    args = build_parser().parse_args(argv)
    with user_errors():
        if not Path(args.root).is_dir():
            raise FileNotFoundError(f"{args.root} is not a folder")
        leaderboard(args.root, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
