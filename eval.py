"""Evaluate a checkpoint: ``python eval.py experiment=demo ckpt_path=.../last.ckpt``."""

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from surgvista.utils.errors import check_extras, user_errors  # noqa: E402
from surgvista.utils.run import evaluate  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    """Validate ``ckpt_path`` and print its metrics (a bad input: one line, exit 1)."""
    with user_errors():
        metrics = evaluate(cfg)
    for name, value in sorted(metrics.items()):
        print(f"{name}: {value:.6g}")


if __name__ == "__main__":
    with user_errors():
        check_extras(sys.argv[1:])
    main()
