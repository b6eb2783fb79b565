"""``surgvista-pretrain-probe`` / ``python -m surgvista.pretrain_probe``: ``surgvista-pretrain-probe <run dir>``."""

from __future__ import annotations

import argparse

from surgvista.cli.common import user_errors

DESCRIPTION = "Does pre-training help? k-NN / linear-probe accuracy of a pre-training run's student vs random init."


def main(argv: list[str] | None = None) -> int:
    """``surgvista-pretrain-probe``: 0 when done; a bad input: one ``error:`` line, exit 1; bad usage: exit 2."""
    parser = argparse.ArgumentParser(prog="surgvista-pretrain-probe", description=DESCRIPTION)
    parser.add_argument("run", help="a pre-training run folder (config.yaml, checkpoints/last.ckpt)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-train", type=int, default=None, help="labelled train clips (default: the monitor's)")
    parser.add_argument("--max-val", type=int, default=None)
    args = parser.parse_args(argv)
    import surgvista.evaluation.pretrain_probe as probing  # Lightning (seconds to import) after --help

    with user_errors():
        result = probing.probe_vs_random(args.run, args.seeds, args.max_train, args.max_val)
    print(probing.table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
