"""The refusals of the checkpoints package, both :class:`~surgvista.utils.errors.UserError`."""

from __future__ import annotations

from surgvista.utils.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or loaded into the requested model (the message lists the keys)."""


class ExportError(UserError, ValueError):
    """A checkpoint that cannot be written in the requested format (the message says why)."""


class RunFolderError(UserError, ValueError):
    """A run folder that belongs to a run of another task or model (the message names both)."""
