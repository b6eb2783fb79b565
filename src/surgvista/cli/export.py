"""Export checkpoints: original SurgVISTA layout, safetensors with a model card, or a Hugging Face VideoMAE folder.

Usage (Hydra-style ``key=value`` arguments; ``surgvista-export`` is the same as ``python -m surgvista.export``)::

    surgvista-export ckpt=logs/train/runs/X/checkpoints/last.ckpt format=original out=surgvista.pth
    surgvista-export ckpt=... format=safetensors out=surgvista.safetensors
    surgvista-export ckpt=... format=hf out=hf_dir/ [hf_arch=auto|model|pretraining|classification]

An existing ``out`` is refused unless ``overwrite=true``; ``out`` may never be the input checkpoint.

Optional: ``num_heads=`` / ``decoder_heads=`` (default: from the preset with that width and depth, else
width/64), ``img_size=`` / ``num_frames=`` (default: the run's ``config.yaml``, else guessed from ``pos_embed``).

``format=hf`` writes ``config.json`` + ``model.safetensors`` loadable by ``transformers.VideoMAE*.from_pretrained``
offline. HF VideoMAE always builds a 1-D sinusoid table in code, so only ``sinusoid1d`` models can be exported
there: a 3-D sin-cos (SurgVISTA/MVD) or learned table is refused rather than silently changed.
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from surgvista.checkpoints.export import export
from surgvista.cli.common import user_errors

REQUIRED = ("ckpt", "format", "out")


def build_parser() -> argparse.ArgumentParser:
    """``surgvista-export key=value ...`` (``-h``: this module's documentation)."""
    parser = argparse.ArgumentParser(
        prog="surgvista-export",
        usage="%(prog)s ckpt=PATH format=original|safetensors|hf out=PATH [key=value ...]",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
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
    known = set(inspect.signature(export).parameters)
    unknown = sorted(set(args) - known)
    if unknown:
        parser.error(f"unknown argument(s) {unknown}; expected key=value with keys {sorted(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """``surgvista-export``: 0 when written; a bad input (or a refused export): one ``error:`` line, exit 1
    (``HYDRA_FULL_ERROR=1``: traceback); bad usage: the usage text, exit 2."""
    args = parse(argv)
    with user_errors():
        path = export(args.pop("ckpt"), args.pop("format"), args.pop("out"), **args)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
