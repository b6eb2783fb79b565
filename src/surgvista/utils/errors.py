"""User errors: a bad input is reported as one clear line (``error: <culprit>: <what was expected>``), not as a
traceback. ``HYDRA_FULL_ERROR=1`` re-raises them with the full traceback.

Every error class whose message names the culprit (a file, key or value) derives from :class:`UserError`;
:func:`find_user_error` finds them (also when Hydra's ``instantiate`` wrapped them), and every command
(``surgvista.cli``) turns them into the one line and exit code 1.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence


class UserError(Exception):
    """Marker base: a bad input whose message names the culprit and what was expected."""


class ConfigError(UserError, ValueError):
    """A config value of the wrong type or outside its range."""


class DiskFullError(UserError, OSError):
    """A write that failed because its filesystem is full (the message names the file and the free space)."""


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


def constructor_error(exc: BaseException) -> ConfigError | None:
    """A ``ValueError``/``TypeError`` that our own code raised while Hydra's ``instantiate`` built a config node (a
    constructor's validation of its arguments), or a key that our constructor does not take (a typo), as a
    :class:`ConfigError` naming that node (Hydra's ``full_key``); ``None`` for anything else (an error raised
    outside ``surgvista`` keeps its traceback)."""
    from hydra.errors import InstantiationException

    cause = exc.__cause__
    if not isinstance(exc, InstantiationException) or not isinstance(cause, (ValueError, TypeError)):
        return None
    key = re.search(r"^full_key: (\S+)$", str(exc), re.M)
    where = key.group(1) if key else "a config node"
    target = re.search(r"target '([\w.]+)'", str(exc))
    unknown = re.search(r"got an unexpected keyword argument '(\w+)'", str(cause))
    if unknown and target and target.group(1).startswith("surgvista."):
        name = target.group(1).rsplit(".", 1)[-1]
        return ConfigError(f"{where}.{unknown.group(1)}: not an argument of {name} (a typo? remove or rename it)")
    if not _raised_by_surgvista(cause):
        return None
    text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return ConfigError(text if text.startswith(where) else f"{where}: {text}")


def _raised_by_surgvista(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is in the ``surgvista`` package."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module == "surgvista" or module.startswith("surgvista.")


def find_user_error(exc: BaseException) -> BaseException | None:
    """The :class:`UserError` (or file error / missing extra) behind ``exc``, following ``__cause__`` and
    ``__context__`` (Hydra's ``InstantiationException`` wraps the constructor's error; a ``ValueError`` that our
    own constructor raised there is a user error too, see :func:`constructor_error`); ``None`` for a bug."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (UserError, FileNotFoundError, FileExistsError)):
            return exc
        wrapped = constructor_error(exc)
        if wrapped is not None and not isinstance(exc.__cause__, UserError):
            return wrapped
        if isinstance(exc, ModuleNotFoundError):
            name = exc.name or next((m for m in EXTRAS if f"`{m}`" in str(exc) or f"'{m}'" in str(exc)), None)
            if name in EXTRAS or (name and name.split(".")[0] in EXTRAS):
                return missing_extra(name, "this config")
        exc = exc.__cause__ or exc.__context__
    return None
