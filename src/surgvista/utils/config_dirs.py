"""Where the Hydra configs come from: the package (``pkg://surgvista.conf``) or a source checkout's ``conf/``,
extended/overridden by ``$SURGVISTA_CONFIG_DIR`` and a ``conf/`` folder in the working directory.

Light on imports on purpose: the Hydra search-path plugin and every ``--help`` import this module.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_CONFIGS = "pkg://surgvista.conf"
CONFIG_DIR_ENV = "SURGVISTA_CONFIG_DIR"


def checkout_root() -> Path | None:
    """The repository root when ``surgvista`` is imported from a source checkout (``src/`` layout), else None."""
    root = Path(__file__).resolve().parents[3]  # src/surgvista/utils/config_dirs.py
    if (root / "conf" / "train.yaml").is_file() and (root / "pyproject.toml").is_file():
        return root
    return None


def primary_config_path() -> str:
    """The checkout's ``conf/`` (absolute) in a clone or editable install, else the configs shipped in the wheel."""
    root = checkout_root()
    return str(root / "conf") if root is not None else PACKAGE_CONFIGS


def user_config_dirs() -> list[Path]:
    """Folders searched before the shipped configs: ``$SURGVISTA_CONFIG_DIR`` (``os.pathsep``-separated), then
    ``./conf``. An entry that is not a folder is an error naming it; the shipped folder itself is skipped."""
    dirs = []
    for entry in filter(None, os.environ.get(CONFIG_DIR_ENV, "").split(os.pathsep)):
        path = Path(entry).expanduser().resolve()
        if not path.is_dir():
            raise NotADirectoryError(f"{CONFIG_DIR_ENV}={entry!r}: {path} is not a folder of Hydra configs")
        dirs.append(path)
    local = Path.cwd() / "conf"
    if local.is_dir():
        dirs.append(local.resolve())
    primary = primary_config_path()
    shipped = Path(primary).resolve() if not primary.startswith("pkg://") else None
    return [d for d in dict.fromkeys(dirs) if d != shipped]


def set_project_root() -> Path:
    """``$PROJECT_ROOT`` (``paths.root_dir``): kept if set, else the checkout root, else the working directory;
    then the ``.env`` files of the working directory and of the project root (variables already set win)."""
    root = Path(os.environ.setdefault("PROJECT_ROOT", str(checkout_root() or Path.cwd())))
    load_env_files(Path.cwd() / ".env", root / ".env")
    return root


def load_env_files(*paths: Path) -> list[Path]:
    """Load ``KEY=value`` lines of the existing ``paths`` into ``os.environ`` without overriding; return them."""
    from dotenv import load_dotenv

    loaded = []
    for path in dict.fromkeys(p.resolve() for p in paths):
        if path.is_file():
            load_dotenv(path, override=False)
            loaded.append(path)
    return loaded
