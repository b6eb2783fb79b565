"""Train: ``python train.py experiment=demo`` | ``python train.py experiment=pretrain_surgvista ...``."""

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from surgvista.utils.errors import check_extras, user_errors  # noqa: E402
from surgvista.utils.run import metric_value, train  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run one training job and return ``optimized_metric`` for Hydra sweepers (a bad input: one line, exit 1)."""
    with user_errors():
        return metric_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    with user_errors():
        check_extras(sys.argv[1:])
    main()
