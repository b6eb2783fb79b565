"""``surgvista-eval`` / ``python -m surgvista.eval``: ``surgvista-eval experiment=demo ckpt_path=.../last.ckpt``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from surgvista.cli.common import hydra_entry_point, user_errors
from surgvista.utils.config_dirs import primary_config_path, set_project_root

set_project_root()


@hydra.main(version_base="1.3", config_path=primary_config_path(), config_name="eval")
def run(cfg: DictConfig) -> None:
    """Evaluate ``ckpt_path`` and print its metrics (fine-tuned models print their Markdown table themselves; a bad
    input: one line, exit 1)."""
    from surgvista.run import evaluate

    with user_errors():
        metrics = evaluate(cfg)
    if not any(name.startswith("test/") for name in metrics):
        for name, value in sorted(metrics.items()):
            print(f"{name}: {value:.6g}")


def main() -> None:
    """Console-script entry point (Hydra reads the command line)."""
    hydra_entry_point(run)


if __name__ == "__main__":
    main()
