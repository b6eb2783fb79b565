"""``surgvista-train`` / ``python -m surgvista.train``: ``surgvista-train experiment=demo`` | ``experiment=...``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from surgvista.cli.common import hydra_entry_point, user_errors
from surgvista.utils.config_dirs import primary_config_path, set_project_root

set_project_root()


@hydra.main(version_base="1.3", config_path=primary_config_path(), config_name="train")
def run(cfg: DictConfig) -> float | None:
    """Run one training job and return ``optimized_metric`` for Hydra sweepers (a bad input: one line, exit 1)."""
    from surgvista.run import metric_value, train

    with user_errors():
        return metric_value(train(cfg), cfg.get("optimized_metric"))


def main() -> None:
    """Console-script entry point (Hydra reads the command line)."""
    hydra_entry_point(run)


if __name__ == "__main__":
    main()
