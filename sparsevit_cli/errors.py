"""Errors a user can fix. The CLI prints them as one line and exits non-zero, never a traceback."""


class UserError(Exception):
    """Bad input from the user: unknown model, invalid config, missing file, ..."""
