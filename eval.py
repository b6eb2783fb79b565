"""Evaluate a checkpoint: ``python eval.py experiment=demo ckpt_path=.../last.ckpt``."""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from surgvista.utils.run import evaluate  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    """Validate ``ckpt_path`` and print its metrics."""
    for name, value in sorted(evaluate(cfg).items()):
        print(f"{name}: {value:.6g}")


if __name__ == "__main__":
    main()
