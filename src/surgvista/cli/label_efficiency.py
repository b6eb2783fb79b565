"""``surgvista-label-efficiency`` / ``python -m surgvista.label_efficiency``: the curve of a label-efficiency sweep."""

from __future__ import annotations

import argparse
from pathlib import Path

import surgvista.evaluation.label_efficiency as efficiency
from surgvista.cli.common import user_errors


def main(argv: list[str] | None = None) -> int:
    """``surgvista-label-efficiency``: 0 when written; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    parser = argparse.ArgumentParser(prog="surgvista-label-efficiency", description=efficiency.__doc__.split("\n")[0])
    parser.add_argument("root", help="a multirun folder of probe runs with data.train_fraction / data.train_shots")
    parser.add_argument("--metric", default="top1", help="the test metric of probe.json to plot (default top1)")
    parser.add_argument("--out", default=None, help="where to write label_efficiency.{csv,png} (default: root)")
    args = parser.parse_args(argv)
    with user_errors():
        if not Path(args.root).is_dir():
            raise FileNotFoundError(f"{args.root} is not a folder")
        efficiency.write_label_efficiency(args.root, args.metric, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
