"""``surgvista-demo-data`` / ``python -m surgvista.demo_data``: ``surgvista-demo-data --out data/demo``
(``--variant proxy --out data/proxy``: the proxy whose phases are not told by colour, docs/proxy.md)."""

from __future__ import annotations

import argparse

import surgvista.data.demo as demo
from surgvista.cli.common import user_errors


def main(argv: list[str] | None = None) -> int:
    """``surgvista-demo-data``: 0 when written; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    parser = argparse.ArgumentParser(prog="surgvista-demo-data", description=demo.__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--val-videos", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=demo.VARIANTS, default="demo",
                        help="demo: phases differ by colour too; proxy: by instrument shape, motion and events only")
    args = parser.parse_args(argv)
    with user_errors(ValueError):
        train, val = demo.generate_demo_dataset(
            args.out, args.videos, args.val_videos, seed=args.seed, variant=args.variant
        )
    print(f"wrote {train} and {val}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
