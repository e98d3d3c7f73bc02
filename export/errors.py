"""Errors of the export side; the user-facing base classes live in `kmr.errors`."""

from kmr.errors import DataError, UserError

__all__ = ["DataError", "ExportError", "UserError"]


class ExportError(UserError):
    """A model cannot be exported or published as asked."""
