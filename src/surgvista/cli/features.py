"""``surgvista-features extract <Hydra overrides of conf/train.yaml>`` (= ``python -m surgvista.features``): runs the
extraction that the composed ``data`` would run before training (``surgvista.features.frames``)."""

from __future__ import annotations

import argparse
import logging

from omegaconf import DictConfig

from surgvista.cli.common import user_errors
from surgvista.utils.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """``surgvista-features extract [key=value ...]``."""
    parser = argparse.ArgumentParser(
        prog="surgvista-features",
        description="Per-frame feature extraction for two-stage temporal models (TeCNO): fills the cache that "
        "data=features reads. The arguments after `extract` are Hydra overrides of conf/train.yaml, e.g. "
        "experiment=tecno_cholec80 paths.data_dir=/datasets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    extract = sub.add_parser("extract", help="extract the features of the composed data config")
    extract.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. experiment=...")
    return parser


def compose_train_config(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` (the clone's conf/ or the installed configs, plus user folders) with ``overrides``."""
    from hydra import compose, initialize_config_dir, initialize_config_module

    from surgvista.utils.config_dirs import primary_config_path, set_project_root

    set_project_root()
    primary = primary_config_path()
    init = (
        initialize_config_module("surgvista.conf", version_base="1.3")
        if primary.startswith("pkg://")
        else initialize_config_dir(primary, version_base="1.3")
    )
    with init:
        return compose("train", overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    """``surgvista-features extract ...``: 0 when the cache is filled; a bad input: one ``error:`` line, exit 1;
    bad usage: exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    cfg = compose_train_config(args.overrides)
    with user_errors():  # HYDRA_FULL_ERROR=1: traceback
        from hydra.utils import instantiate

        from surgvista.utils.config_check import check_config

        check_config(cfg)
        data = instantiate(cfg.data, _convert_="all")
        if not callable(getattr(data, "extract", None)):
            raise ConfigError(f"data={type(data).__name__} has no feature cache to fill; use a features data config")
        print(f"features in {data.extract()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
