"""Errors a user can fix. The CLI prints their message (no traceback) and exits 1."""


class UserError(Exception):
    """Bad input from the user: a file, a flag, a value. The message says what and why."""


class DataError(UserError):
    """The interactions file cannot be used (missing, empty, bad column or value)."""
