"""``surgvista-leaderboard`` / ``python -m surgvista.leaderboard``: ``surgvista-leaderboard <multirun dir>``."""

from __future__ import annotations

import argparse
from pathlib import Path

import surgvista.evaluation.leaderboard as board
from surgvista.cli.common import user_errors


def main(argv: list[str] | None = None) -> int:
    """``surgvista-leaderboard``: 0 when written; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    parser = argparse.ArgumentParser(prog="surgvista-leaderboard", description=board.__doc__.split("\n")[0])
    parser.add_argument("root", help="a multirun folder (or any folder holding probe runs)")
    parser.add_argument("--out", default=None, help="where to write leaderboard.{csv,md} (default: root)")
    args = parser.parse_args(argv)
    with user_errors():
        if not Path(args.root).is_dir():
            raise FileNotFoundError(f"{args.root} is not a folder")
        board.leaderboard(args.root, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
