"""Does pre-training help? k-NN / linear-probe accuracy of a pre-training run's student vs random init.

``surgvista-pretrain-probe <pre-training run dir> [--seeds 3] [--max-train N] [--max-val N]`` (also
``python -m surgvista.pretrain_probe``): prints the table and writes ``<run>/probe_vs_random.json``
(``surgvista.evaluation.pretrain_probe``).
"""

from __future__ import annotations

import argparse

from surgvista.cli.common import user_errors
from surgvista.evaluation.pretrain_probe import probe_vs_random, table


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``surgvista-pretrain-probe``."""
    parser = argparse.ArgumentParser(prog="surgvista-pretrain-probe", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a pre-training run folder (config.yaml, checkpoints/last.ckpt)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-train", type=int, default=None, help="labelled train clips (default: the monitor's)")
    parser.add_argument("--max-val", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``surgvista-pretrain-probe``: 0 when done; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    args = build_parser().parse_args(argv)
    with user_errors():
        result = probe_vs_random(args.run, args.seeds, args.max_train, args.max_val)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
