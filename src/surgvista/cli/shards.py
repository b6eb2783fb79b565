"""``surgvista-shards`` / ``python -m surgvista.shards``: ``surgvista-shards MANIFEST ... --out DIR``."""

from __future__ import annotations

import argparse
import logging

import surgvista.data.shards as sharding
from surgvista.cli.common import user_errors


def build_parser() -> argparse.ArgumentParser:
    """The options of ``surgvista-shards`` (the keyword arguments of :func:`write_shards`)."""
    p = argparse.ArgumentParser(prog="surgvista-shards", description=sharding.__doc__.split("\n\n")[0])
    p.add_argument("manifests", nargs="+", help="manifests (JSON Lines, docs/data.md) whose clips are written")
    p.add_argument("--out", required=True, help="output folder or URI (s3://bucket/prefix)")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--sampling-rate", type=int, default=4)
    p.add_argument("--anchor-stride", type=int, default=1, help="one clip per k-th manifest frame")
    p.add_argument("--backend", default="pyav", help="video reader for `video` rows (decord|pyav|torchcodec)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of frames decoded from videos")
    p.add_argument("--chunk-bytes", default="64MB", help="target size of one chunk file")
    p.add_argument("--workers", type=int, default=1, help="processes writing chunks in parallel")
    p.add_argument("--on-bad-video", choices=("error", "skip"), default="error")
    p.add_argument("--min-video-frames", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="replace existing shards under --out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (litdata checkpoints)")
    p.add_argument("--exclude-from", nargs="*", default=[], help="leakage guard: <dataset>_<split> names or manifests")
    p.add_argument("--data-dir", default=None, help="where <dataset>/<split>.jsonl of --exclude-from names live")
    p.add_argument("--allow-leakage", action="store_true", help="write clips of --exclude-from videos anyway")
    return p


def main(argv: list[str] | None = None) -> int:
    """``surgvista-shards``: 0 when written; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with user_errors(ValueError, sharding.ShardWriteError):
        n = sharding.write_shards(**vars(args))
    print(f"wrote {n} clips to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
