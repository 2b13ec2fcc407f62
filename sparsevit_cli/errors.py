"""Errors a user can fix. The CLI prints them as one line and exits non-zero, never a traceback."""
import logging
import warnings
from contextlib import contextmanager
from typing import Iterator

#: libraries whose loggers warn about things a user of the CLI cannot act on
NOISY_LOGGERS = ("timm", "torch", "onnxscript", "onnx")


class UserError(ValueError):
    """Bad input from the user: unknown model, invalid config, missing file, ... Its message is one line that
    says what is wrong and how to fix it.

    A `ValueError` subclass, so Python code that calls the library catches it as the bad value it is:
    `except ValueError` (or `except UserError` for the toolkit's own checks). The CLI prints it as one line
    on stderr and exits with code 2."""


def raise_own_user_error(error: Exception) -> None:
    """Re-raise the UserError a pydantic validator raised (a ValueError, so pydantic wraps it in its
    ValidationError): its own line already says what is wrong and how to fix it. Returns otherwise."""
    errors = getattr(error, "errors", None)
    first = errors()[0] if callable(errors) and errors() else {}
    own = (first.get("ctx") or {}).get("error")
    if isinstance(own, UserError):
        raise own from None


#: longest quoted value in an error line (a 1 MB config value is cut, not echoed whole)
QUOTE_LIMIT = 80


def shorten(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)` (a string: as is) cut to `limit` characters, saying how long it was: the one way an
    error line quotes a value the user gave."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class Interrupted(KeyboardInterrupt):
    """SIGTERM as an exception (the CLI installs the handler), so that `finally` blocks run: a temporary
    file is removed and a lock released as after Ctrl-C, instead of the process vanishing mid-write."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries raise pages of text; users get one line)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextmanager
def quiet_warnings(verbose: bool = False) -> Iterator[None]:
    """Inside: library warnings (timm, torch tracer / ONNX exporter, ...) and their loggers' warnings do
    not reach the user's terminal, unless `verbose`, which shows them all again (also inside an outer
    quiet block: the CLI is quiet by default and `--verbose` opts out)."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("default" if verbose else "ignore")
        for lg in loggers:
            lg.setLevel(logging.NOTSET if verbose else logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
