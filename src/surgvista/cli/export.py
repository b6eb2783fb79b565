"""``surgvista-export`` / ``python -m surgvista.export``: the usage is ``surgvista.checkpoints.export``'s
docstring (``key=value`` arguments)."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

import surgvista.checkpoints.export as exporting
from surgvista.cli.common import user_errors

REQUIRED = ("ckpt", "format", "out")


def build_parser() -> argparse.ArgumentParser:
    """``surgvista-export key=value ...`` (``-h`` shows the documentation of ``surgvista.checkpoints.export``)."""
    parser = argparse.ArgumentParser(
        prog="surgvista-export",
        usage="%(prog)s ckpt=PATH format=original|safetensors|hf out=PATH [key=value ...]",
        description=exporting.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=exporting.__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("settings", nargs="*", metavar="key=value", help="the arguments of the export")
    return parser


def parse(argv: list[str] | None) -> dict[str, Any]:
    """The ``key=value`` arguments as typed values (``overwrite=true`` → ``True``); bad usage exits 2."""
    from omegaconf import OmegaConf

    parser = build_parser()
    settings = parser.parse_args(argv).settings
    bad = [a for a in settings if "=" not in a]
    if bad:
        parser.error(f"arguments must be key=value, got {bad}")
    args = OmegaConf.to_container(OmegaConf.from_dotlist(settings))
    missing = [k for k in REQUIRED if k not in args]
    if missing:
        parser.error(f"missing argument(s) {missing}")
    known = set(inspect.signature(exporting.export).parameters)
    unknown = sorted(set(args) - known)
    if unknown:
        parser.error(f"unknown argument(s) {unknown}; expected key=value with keys {sorted(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """``surgvista-export``: 0 when written; a bad input (or a refused export): one ``error:`` line, exit 1
    (``HYDRA_FULL_ERROR=1``: traceback); bad usage: the usage text, exit 2."""
    args = parse(argv)
    with user_errors():
        path = exporting.export(args.pop("ckpt"), args.pop("format"), args.pop("out"), **args)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
