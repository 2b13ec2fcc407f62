"""Errors a user can fix. The CLI prints them as one line and exits non-zero, never a traceback."""


class UserError(Exception):
    """Bad input from the user: unknown model, invalid config, missing file, ..."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries raise pages of text; users get one line)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
