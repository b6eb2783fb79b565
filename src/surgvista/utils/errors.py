"""User errors: a bad input is reported as one clear line (``error: <culprit>: <what was expected>``), not as a
traceback. ``HYDRA_FULL_ERROR=1`` re-raises them with the full traceback.

Every error class whose message names the culprit (a file, key or value) derives from :class:`UserError`;
:func:`find_user_error` finds them (also when Hydra's ``instantiate`` wrapped them), and every command
(``surgvista.cli``) turns them into the one line and exit code 1.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence


class UserError(Exception):
    """Marker base: a bad input whose message names the culprit and what was expected."""


class ConfigError(UserError, ValueError):
    """A config value of the wrong type or outside its range."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency that the chosen config needs is not installed."""


# Importable module -> the extra of pyproject.toml that installs it.
EXTRAS = {
    "tensorboard": "tensorboard",
    "tensorboardX": "tensorboard",
    "hydra_plugins.hydra_optuna_sweeper": "sweep",
    "optuna": "sweep",
    "hydra_plugins.hydra_submitit_launcher": "cluster",
    "submitit": "cluster",
    "flash_attn": "flash",
}
# Command-line overrides (prefix) -> the module they need. Hydra composes plugins before our code runs, so
# these are checked on the command line first.
OVERRIDE_NEEDS = (
    ("hparams_search=", "hydra_plugins.hydra_optuna_sweeper"),
    ("hydra/sweeper=optuna", "hydra_plugins.hydra_optuna_sweeper"),
    ("hydra/launcher=surgvista_slurm", "hydra_plugins.hydra_submitit_launcher"),
    ("hydra/launcher=submitit", "hydra_plugins.hydra_submitit_launcher"),
    ("logger=tensorboard", "tensorboard"),
    ("logger=many_loggers", "tensorboard"),
)


def importable(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_extra(module: str, needed_by: str) -> MissingExtraError:
    """The one-line error for a missing optional module."""
    extra = EXTRAS.get(module) or EXTRAS.get(module.split(".")[0])
    how = f"pip install 'surgvista[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
    return MissingExtraError(f"{needed_by} needs the optional package {module!r}, which is not installed: {how}")


def check_extras(argv: Sequence[str]) -> None:
    """Raise :class:`MissingExtraError` for a command-line override whose plugin/logger package is missing."""
    for arg in argv:
        if arg.startswith("~") or arg.endswith(("=null", "=none")):
            continue  # removing or disabling a group needs nothing
        for prefix, module in OVERRIDE_NEEDS:
            alternative = module == "tensorboard" and importable("tensorboardX")
            if arg.lstrip("+").startswith(prefix) and not alternative and not importable(module):
                raise missing_extra(module, arg)


def find_user_error(exc: BaseException) -> BaseException | None:
    """The :class:`UserError` (or file error / missing extra) behind ``exc``, following ``__cause__`` and
    ``__context__`` (Hydra's ``InstantiationException`` wraps the constructor's error); ``None`` for a bug."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (UserError, FileNotFoundError, FileExistsError)):
            return exc
        if isinstance(exc, ModuleNotFoundError):
            name = exc.name or next((m for m in EXTRAS if f"`{m}`" in str(exc) or f"'{m}'" in str(exc)), None)
            if name in EXTRAS or (name and name.split(".")[0] in EXTRAS):
                return missing_extra(name, "this config")
        exc = exc.__cause__ or exc.__context__
    return None
