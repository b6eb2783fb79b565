"""``surgvista-prepare`` / ``python -m surgvista.prepare``: ``surgvista-prepare cholec80 --raw R --out O``."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from fractions import Fraction

import surgvista.data.prepare as preparing
from surgvista.cli.common import user_errors
from surgvista.data.adapters import REGISTRY


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 512x320, got {text!r}") from None
    return w, h


def _fps(text: str) -> float | str | None:
    if text.lower() in ("native", "all", "none"):
        return None
    return text if text == "default" else float(Fraction(text)) if "/" in text else float(text)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``surgvista-prepare`` (their names are the fields of :class:`PrepareOptions`)."""
    p = argparse.ArgumentParser(
        prog="surgvista-prepare",
        description=preparing.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="datasets:\n" + "\n".join(f"  {k:20s} {REGISTRY[k].description}" for k in sorted(REGISTRY)),
    )
    p.add_argument("dataset", choices=sorted(REGISTRY))
    p.add_argument("--raw", required=True, help="the official download (unpacked); never written to")
    p.add_argument(
        "--videos",
        default=None,
        help="cholec80_cvs: the Cholec80 root (videos/, phase_annotations/) when not inside --raw",
    )
    p.add_argument("--out", required=True, help="output folder, normally ${paths.data_dir}/<dataset>")
    p.add_argument(
        "--fps",
        type=_fps,
        default="default",
        help="manifest frame rate (default: 1, or every frame for clip datasets); 'native' = every frame",
    )
    p.add_argument(
        "--no-extract",
        dest="extract",
        action="store_false",
        help="no frame extraction: manifests point into the original videos (read by decord)",
    )
    p.add_argument("--size", type=_size, default=None, help="resize extracted frames to WxH (reference: 512x320)")
    p.add_argument("--keep-aspect", action="store_true", help="with --size: fit inside WxH keeping the aspect ratio")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--crop-black", action="store_true", help="crop black margins (Cholec80 cut-margin)")
    p.add_argument("--workers", type=int, default=1, help="videos processed in parallel")
    p.add_argument(
        "--on-bad-video",
        choices=("error", "skip"),
        default="error",
        help="a corrupt or too-short video: stop with an error, or log, count and skip it",
    )
    p.add_argument("--min-frames", type=int, default=1, help="videos with fewer manifest frames are bad (one clip)")
    p.add_argument(
        "--split", default=None, help="official split variant (cholec80: 40-40|40-8-32; cholect50: challenge|camma)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random splits (saved to splits.json)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out that holds other files (never replaces a file prepare did not write)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    return p


def options_from(args: argparse.Namespace) -> preparing.PrepareOptions:
    """The :class:`PrepareOptions` of a parsed command line (``--quiet``: no progress)."""
    given = {f.name: getattr(args, f.name) for f in fields(preparing.PrepareOptions) if f.name != "progress"}
    return preparing.PrepareOptions(**given, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    """``surgvista-prepare``: 0 when prepared; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    with user_errors(ValueError):
        preparing.prepare(args.dataset, args.raw, args.out, options_from(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
