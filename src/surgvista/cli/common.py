"""The exit convention of every command: success exits 0; a bad input (a file, key or value that is wrong) is exactly
one line ``error: <culprit>: <what was expected>`` on stderr and exit status 1 (``HYDRA_FULL_ERROR=1``: the
traceback instead); bad usage (an unknown option, a missing argument) is the usage text and exit status 2
(``argparse``'s ``parser.error``). Errors that are neither (bugs) keep their traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from surgvista.utils.errors import check_extras, find_user_error


def one_line(exc: BaseException) -> str:
    """``error: <message>`` (the message of an ``OSError`` raised by the OS names its file)."""
    text = str(exc) if not isinstance(exc, OSError) or not exc.filename else f"{exc.filename}: {exc.strerror}"
    return f"error: {text}"


@contextmanager
def user_errors(*also: type[Exception]) -> Iterator[None]:
    """Print a bad input as one ``error: ...`` line to stderr and exit with status 1; anything else propagates.

    A bad input is a :class:`~surgvista.utils.errors.UserError` (or a file error, or a missing optional package)
    anywhere in the exception's chain, or an exception of a type in ``also`` (the command's own input errors).
    ``HYDRA_FULL_ERROR=1`` lets bad inputs propagate too (full traceback).
    """
    try:
        yield
    except Exception as e:
        found = e if also and isinstance(e, also) else find_user_error(e)
        if found is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(one_line(found), file=sys.stderr)
        raise SystemExit(1) from None


def hydra_entry_point(run: Callable[[], object]) -> None:
    """Run a Hydra app from the command line; a missing optional plugin (``check_extras``) is one line."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.surgvista_searchpath import SurgvistaSearchPathPlugin

    # Hydra finds plugins by listing the hydra_plugins folders, which an editable install's import hook hides.
    Plugins.instance().register(SurgvistaSearchPathPlugin)
    with user_errors():
        check_extras(sys.argv[1:])
    run()
